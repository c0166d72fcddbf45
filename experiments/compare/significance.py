"""Seed statistics: each group's 95% interval, whether it is separated from the best group of
its task or within noise, and ranks that share ties. All on the selection metric, over the seeds
of the group's kept grid point (``aggregate`` picks that point first).

**Interval: Student-t on the seed values**, mean ± t(0.975, n-1) · std / √n. Studies run 3 to 5
seeds, and at that count the t-interval is the honest one: it is exact for normal seed noise
and widens with the few degrees of freedom there are. A bootstrap would be narrower than it
should be: it resamples only the values seen (3 seeds give 10 distinct resamples), its spread
misses the factor (n-1)/n and the t tails, so at n=3 its 95% covers far less than 95%.

**Fewer than 3 seeds: no interval, no mark, no rank.** With 2 seeds t(0.975, 1) = 12.7, so the
interval is the mean ± 9 sample stds: it says nothing, and a test on 1 degree of freedom
separates almost nothing. A group of 1 seed has no spread at all. Such a group is listed with
its mean and says why it is not marked, rather than get a mark that means nothing.

**Test: Welch's t-test, two-sided at 0.05**, of each group against the best group of its task
(the best mean among the groups of 3 or more seeds): *separated* when p < 0.05, else *within
noise*. Welch's rather than Student's because mixers differ in how much they vary over seeds (a
mixer near a learning-rate edge diverges on some seeds), and it needs no equal seed counts.
Rather than the non-overlap of two 95% intervals, because that is a far stricter test (about
p < 0.006 for equal spreads) and would call within noise what the data do separate. Two-sided
because which group is best is read off the same data. No correction for the several groups
tested: a mark is a reading aid next to the interval, not a claim; with many groups expect one
in twenty of the within-noise ones to read separated by chance.

**Rank: 1 + the number of groups that beat it** (a better mean and separated from it by the same
test), within its task. Groups that no test tells apart share a rank, ranks skip after a tie
(1, 1, 3) and the rule needs no transitivity, which "within noise" does not have. A group within
noise of the best can still rank below 1 when a steadier group between them beats it.

The t-distribution is computed here (the regularised incomplete beta function) so that
``mixerlab compare`` needs no scipy; the tests check it against scipy where that is installed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mixerlab.experiments.compare.comparison import Group, Mark, Stats

ALPHA = 0.05  # the test's level; the interval is its two-sided 1 - ALPHA
MIN_SEEDS = 3  # fewer: no interval, no mark, no rank (see the module docstring)


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return fraction


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(log_front + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_p_value(t: float, df: float) -> float:
    """Two-sided p-value of ``t`` under Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return _incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def t_critical(df: float, alpha: float = ALPHA) -> float:
    """The t with two-sided p-value ``alpha`` (t(0.975, df) at 0.05), by bisection."""
    low, high = 0.0, 1.0
    while t_p_value(high, df) > alpha:
        low, high = high, 2.0 * high
    for _ in range(100):
        middle = (low + high) / 2.0
        low, high = (middle, high) if t_p_value(middle, df) > alpha else (low, middle)
    return (low + high) / 2.0


def untested_reason(stats: Stats) -> str | None:
    """Why ``stats`` gets no interval and no mark, in words; None when it gets both."""
    if stats.n < MIN_SEEDS:
        seeds = "1 seed" if stats.n == 1 else f"{stats.n} seeds"
        return f"{seeds}, needs {MIN_SEEDS}"
    if not (math.isfinite(stats.mean) and math.isfinite(stats.std or 0.0)):
        return "a seed diverged"
    return None


def t_interval(stats: Stats) -> tuple[float, float] | None:
    """The 95% Student-t interval of the mean over seeds; None below 3 seeds or when a seed
    diverged."""
    if untested_reason(stats) is not None or stats.std is None:
        return None
    half = t_critical(stats.n - 1) * stats.std / math.sqrt(stats.n)
    return stats.mean - half, stats.mean + half


def welch_p(a: Stats, b: Stats) -> float:
    """Welch's two-sided p-value for equal means of two groups of seeds (each of 2 or more)."""
    va, vb = (a.std or 0.0) ** 2 / a.n, (b.std or 0.0) ** 2 / b.n
    if va + vb == 0.0:  # no spread in either group: any difference is a separation
        return 1.0 if a.mean == b.mean else 0.0
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    return t_p_value((a.mean - b.mean) / math.sqrt(va + vb), df)


def mark_groups(groups: Sequence[Group], mode: str) -> dict[tuple[str, ...], Mark]:
    """Every group's mark, by label: ``groups`` are one task's (marks never cross tasks)."""
    sign = 1.0 if mode == "max" else -1.0
    tested = [g for g in groups if untested_reason(g.metric) is None]
    best = max(tested, key=lambda g: sign * g.metric.mean, default=None)

    def beats(winner: Group, loser: Group) -> bool:
        better = sign * (winner.metric.mean - loser.metric.mean) > 0
        return better and welch_p(winner.metric, loser.metric) < ALPHA

    ranks = {g.label: 1 + sum(beats(other, g) for other in tested) for g in tested}
    marks = {}
    for group in groups:
        if group.label not in ranks or best is None:
            marks[group.label] = Mark(
                None, "untested", None, None, False, untested_reason(group.metric)
            )
            continue
        rank = ranks[group.label]
        p = None if group is best else welch_p(group.metric, best.metric)
        verdict = "best" if p is None else "separated" if p < ALPHA else "within noise"
        tied = list(ranks.values()).count(rank) > 1
        marks[group.label] = Mark(t_interval(group.metric), verdict, p, rank, tied, None)
    return marks
