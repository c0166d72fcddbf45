"""A suite's score (MAD) per row: each task's score and the suite's, as bars side by side with
their 95% intervals over seeds; stored rows hatched, stale ones faded. Drawn only for a suite's
runs (``mixerlab.experiments.compare.suite``)."""

from __future__ import annotations

import matplotlib

from mixerlab.experiments.compare.comparison import Comparison, Score, SuiteRow
from mixerlab.experiments.compare.plots.base import new_figure, register_plot, to_png


def _legend(row: SuiteRow) -> str:
    if not row.stored:
        return row.name
    return f"{row.name} (stored, stale)" if row.stale else f"{row.name} (stored)"


def _error(score: Score) -> tuple[float, float]:
    """The interval as bar error lengths below and above the score; none without one."""
    if score.interval is None:
        return 0.0, 0.0
    low, high = score.interval
    return max(score.value - low, 0.0), max(high - score.value, 0.0)


@register_plot("suite_score.png", "a suite's score (MAD): each task's and their mean, per row")
def suite_score(comparison: Comparison) -> bytes | None:
    """Bars grouped by task, the suite's score last; a bar per row with a score there."""
    table = comparison.suite
    if table is None:
        return None
    parts = [*table.tasks, table.title]
    palette = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    fig = new_figure(height=4.5, width=max(7.0, len(parts) * (0.9 + 0.15 * len(table.rows))))
    ax = fig.subplots()
    width = 0.8 / len(table.rows)
    for index, row in enumerate(table.rows):
        scores = [row.scores.get(task) for task in table.tasks] + [row.overall]
        drawn = [(x, s) for x, s in enumerate(scores) if s is not None]
        if not drawn:
            continue
        errors = [_error(s) for _, s in drawn]
        ax.bar(
            [x - 0.4 + (index + 0.5) * width for x, _ in drawn],
            [s.value for _, s in drawn],
            width,
            yerr=[[e[0] for e in errors], [e[1] for e in errors]],
            color=palette[index % len(palette)],
            hatch="//" if row.stored else None,
            alpha=0.45 if row.stale else 1.0,
            capsize=2,
            label=_legend(row),
        )
    ax.set_xticks(range(len(parts)), [p.removeprefix(f"{table.name}_") for p in parts])
    ax.set_ylabel(f"best {table.metric}, mean over settings (95% interval)")
    ax.set_title(f"{table.title} by {', '.join(table.row_by) or 'run'}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return to_png(fig)
