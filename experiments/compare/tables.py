"""The cells every renderer shows: titles, the main table with each group's interval, mark and
rank, the notes on the grid point kept, the runs that did not finish and those that cannot be
read, formatted once for the terminal, markdown and HTML alike."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mixerlab.experiments.compare.chance import at_chance, describe
from mixerlab.experiments.compare.comparison import Comparison, Group, Mark, Stats
from mixerlab.experiments.compare.ledger import ledger_lines
from mixerlab.experiments.compare.runs import Run, lookup, value_label
from mixerlab.experiments.compare.significance import ALPHA, MIN_SEEDS, t_critical
from mixerlab.lightning_modules.metric_names import metric_mode
from mixerlab.lightning_modules.record import RESULTS_FILE


def _human(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _mean_std(stats: Stats | None, mean_fmt: str, std_fmt: str) -> str:
    if stats is None:
        return "-"
    text = format(stats.mean, mean_fmt)
    return text if stats.std is None else f"{text} ± {stats.std:{std_fmt}}"


def _point_cells(group: Group) -> list[str]:
    """The kept grid point, a cell per --best-over key, each with how many values of that key
    the group ran where it ran several."""
    cells = []
    for index, value in enumerate(group.point):
        ran = len({point[index] for point in group.grid})
        cells.append(f"{value_label(value)} (best of {ran})" if ran > 1 else value_label(value))
    return cells


def _interval_cell(mark: Mark) -> str:
    if mark.interval is None:
        return f"none ({mark.why})"
    low, high = mark.interval
    return f"[{low:.4g}, {high:.4g}]"


def _p_text(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3g}"


def _verdict_cell(mark: Mark) -> str:
    """``best``, ``separated (p=0.003)``, ``within noise (p=0.41)`` or ``untested``."""
    return mark.verdict if mark.p is None else f"{mark.verdict} ({_p_text(mark.p)})"


def _rank_cell(mark: Mark) -> str:
    if mark.rank is None:
        return "-"
    return f"{mark.rank} (tied)" if mark.tied else str(mark.rank)


def title(comparison: Comparison) -> str:
    better = "lower" if comparison.mode == "min" else "higher"
    return f"best {comparison.metric} ({better} is better) by {', '.join(comparison.by)}"


def _listing(values: tuple[str, ...], limit: int = 12) -> str:
    shown = ", ".join(values[:limit])
    return f"{shown}, ... ({len(values)} in all)" if len(values) > limit else shown or "-"


def _dates(dates: tuple[str, ...]) -> str:
    return dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"


def scope_line(comparison: Comparison) -> str:
    """One line under the terminal table's title: which runs these are."""
    scope = comparison.scope
    return (
        f"experiment {_listing(scope.names)} · task {_listing(scope.tasks)} · "
        f"{_listing(scope.budgets)} steps · {_dates(scope.dates)}"
    )


def scope_lines(comparison: Comparison) -> list[str]:
    """The report's header: what was compared, under which settings, and what differs."""
    scope = comparison.scope
    return [
        f"experiment (config name): {_listing(scope.names)}",
        f"task: {_listing(scope.tasks)}",
        f"budget (trainer.max_steps): {_listing(scope.budgets)}",
        f"runs written: {_dates(scope.dates)}",
        f"--by {','.join(comparison.by)} --metric {comparison.metric} --mode {comparison.mode}",
        "config keys that differ between groups: "
        + (_listing(scope.differing) if scope.differing else "none besides seed"),
    ]


def _statistics_caption(comparison: Comparison) -> str:
    """What the interval, mark and rank columns mean, and why a group of few seeds has none."""
    text = ""
    if any(comparison.mark(g).interval is not None for g in comparison.groups):
        text += (
            f" 95% interval: Student-t over the seeds. vs best: Welch's t-test against the best"
            f" group of {MIN_SEEDS} or more seeds in its task, separated at p < {ALPHA:g}, else"
            " within noise. rank: 1 + the groups that beat it by that test, so groups it cannot"
            " tell apart share a rank."
        )
    if any(g.metric.n < MIN_SEEDS for g in comparison.groups):
        width = t_critical(1) / math.sqrt(2)
        text += (
            f" Fewer than {MIN_SEEDS} seeds: no interval, mark or rank (a 95% interval over 2"
            f" seeds reaches {width:.0f} standard deviations either side of the mean)."
        )
    return text


def caption(comparison: Comparison) -> str:
    """How the numbers were made, under every table."""
    if comparison.one_seed_each:
        text = "1 seed per group: single runs, no spread over seeds."
    else:
        text = "mean ± sample std over seeds; n = seeds."
        if any(group.metric.n == 1 for group in comparison.groups):
            text += " A group with 1 seed has no ± std."
    text += _statistics_caption(comparison)
    if comparison.also:
        text += f" {', '.join(comparison.also)}: at the end of training, same runs."
    if any(g.picked for g in comparison.groups):
        text += (
            f" Where a group ran several values of {', '.join(comparison.best_over)}, only its"
            f" grid point with the best mean {comparison.metric} over the seeds every point ran"
            " is kept, with all its seeds (as Zoology reports MQAR); see the selection."
        )
    return text


def _metric_header(comparison: Comparison, name: str, final: bool = False) -> str:
    """A metric's column title, naming its chance level when every group has the same one."""
    notes = [note for note in ("final" if final else None, _common_note(comparison, name)) if note]
    return f"{name} ({', '.join(notes)})" if notes else name


def _common_note(comparison: Comparison, metric: str) -> str | None:
    chance = comparison.chance(metric)
    return chance.note() if chance else None


def _metric_cell(comparison: Comparison, group: Group, name: str, stats: Stats | None) -> str:
    """Mean ± std, flagged "at chance" where it does not beat chance by its seed spread; the
    chance level itself where the groups have different ones (else it is in the header)."""
    text = _mean_std(stats, ".4g", ".2g")
    chance = group.chance.get(name)
    mode = comparison.mode if name == comparison.metric else metric_mode(name)
    if chance is None or stats is None:
        return text
    notes = [] if comparison.chance(name) else [chance.note()]
    if mode is not None and at_chance(stats, chance, mode):
        notes.append(f"at {chance.label}")
    return f"{text} ({', '.join(notes)})" if notes else text


def compute_lines(comparison: Comparison) -> list[str]:
    """What the compared runs cost, every readable one (finished or not, every learning rate):
    runs, wall, core and GPU hours, the machines, the runs without a ledger."""
    return ledger_lines(comparison.ledger)


def chance_notes(comparison: Comparison) -> list[str]:
    """What the chance levels of the tabulated metrics are and where they come from."""
    metrics = list(dict.fromkeys([comparison.metric, *comparison.also]))
    common = {m: c for m in metrics if (c := comparison.chance(m)) is not None}
    lines = describe(common, metrics)
    if differ := [m for m in metrics if m not in common and comparison.chance_levels(m)]:
        lines.append(
            f"{', '.join(differ)}: no chance level shared by every group, each in its cell"
        )
    if lines:
        lines.append(
            '"at chance": the mean beats the chance level by no more than its seed spread (std '
            "over seeds, at least 0.01 for a metric up to 1, 1% of the level beyond)"
        )
    return lines


def _budget_label(budget: Any) -> str:
    """How a run's model was sized: ``params 200k by d_model=84``; ``-`` without a budget."""
    target = budget.get("target") if isinstance(budget, dict) else None
    if not isinstance(target, (int, float)):
        return "-"
    return (
        f"{value_label(budget.get('measure'))} {_human(target)} by "
        f"{value_label(budget.get('solved_for'))}={value_label(budget.get('value'))}"
    )


def _budget_cell(group: Group) -> str:
    return ", ".join(sorted({_budget_label(run.results.get("budget")) for run in group.runs}))


def table_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the main table, shared by terminal, markdown and HTML:
    every group's metrics and what its model costs (parameters, FLOPs per token, decoding
    state), plus how a budget sized it where any run was sized to one."""
    budgeted = any(_budget_cell(g) != "-" for g in comparison.groups)
    header = [
        *comparison.by,
        *comparison.best_over,
        "n",
        _metric_header(comparison, comparison.metric),
        "95% interval",
        "vs best",
        "rank",
        *(_metric_header(comparison, name, name == comparison.metric) for name in comparison.also),
        "params",
        "FLOPs/token",
        "state size",
        *(["budget"] if budgeted else []),
        "tokens/s",
        "wall (s)",
    ]
    rows = [
        [
            *g.label,
            *_point_cells(g),
            str(g.metric.n),
            _metric_cell(comparison, g, comparison.metric, g.metric),
            _interval_cell(comparison.mark(g)),
            _verdict_cell(comparison.mark(g)),
            _rank_cell(comparison.mark(g)),
            *(_metric_cell(comparison, g, name, g.also[name]) for name in comparison.also),
            _human(g.params.mean if g.params else None),
            _human(g.flops_per_token.mean if g.flops_per_token else None),
            _human(g.state_size.mean if g.state_size else None),
            *([_budget_cell(g)] if budgeted else []),
            _mean_std(g.tokens_per_s, ",.0f", ",.0f"),
            _mean_std(g.wall_s, ",.0f", ",.0f"),
        ]
        for g in comparison.groups
    ]
    return header, rows


def selection_heading(comparison: Comparison) -> str:
    """The title of the selection notes."""
    return f"Best grid point over {', '.join(comparison.best_over)}"


def point_label(point: tuple[Any, ...]) -> str:
    """A grid point as a cell: its one value, or its values in parentheses."""
    labels = [value_label(value) for value in point]
    return labels[0] if len(labels) == 1 else f"({', '.join(labels)})"


def selection_notes(comparison: Comparison) -> list[str]:
    """One line per group that ran several grid points: what was kept, out of what."""
    keys = comparison.best_over
    swept = keys[0] if len(keys) == 1 else f"({', '.join(keys)})"
    notes = []
    for group in comparison.groups:
        if not group.picked:
            continue
        picked = ", ".join(f"{k}={value_label(v)}" for k, v in zip(keys, group.point, strict=True))
        grid = ", ".join(
            f"{point_label(point)}: {stats.mean:.4g} (n={stats.n})"
            for point, stats in group.grid.items()
        )
        notes.append(
            f"{comparison.group_name(group)}: picked {picked} by mean {comparison.metric} "
            f"({comparison.mode}) over the seeds every point ran, from {swept} {grid}"
        )
    return notes


def _short_error(error: Any, limit: int = 160) -> str:
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    text = lines[-1] if lines else "-"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _age(updated_at: Any) -> str | None:
    """How long ago an ISO 8601 time was (``40 s``, ``5 min``, ``3 h``, ``2 d``); None when it
    is missing or not a time."""
    try:
        then = datetime.fromisoformat(str(updated_at))
    except ValueError:
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=timezone.utc)
    seconds = max(0.0, (datetime.now(timezone.utc) - then).total_seconds())
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _unfinished_detail(run: Run) -> str:
    """What went wrong (the error's last line) or, for a run that says ``running``, its process
    and last update, which tell a live run from one that died without a word."""
    if run.status not in ("running", "killed"):
        return _short_error(run.results.get("error"))
    pid, host = run.results.get("pid"), run.results.get("host")
    if run.status == "killed":
        parts = [f"process {pid} is gone from this machine"]
    elif pid is None:
        parts = []
    else:
        parts = [f"pid {pid}" + (f" on {host}" if host else "")]
    if age := _age(run.results.get("updated_at")):
        parts.append(f"last update {age} ago")
    return ", ".join(parts) or "-"


def unfinished_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Runs not in the table (running, killed, failed, interrupted, diverged): where, which
    group, which seed, the last step reached, and the error's last line or the process."""
    header = ["run", "status", *comparison.by, "seed", "step", "detail"]
    rows = [
        [
            run.name,
            run.status,
            *(value_label(lookup(run.results, k)) for k in comparison.by),
            value_label(run.results.get("seed")),
            value_label(run.results.get("last_step")),
            _unfinished_detail(run),
        ]
        for run in comparison.unfinished
    ]
    return header, rows


def unreadable_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Run folders left out because their results.json cannot be used, and why."""
    header = [RESULTS_FILE, "problem"]
    rows = [[str(Path(run.name) / RESULTS_FILE), str(run.problem)] for run in comparison.unreadable]
    return header, rows


def run_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """The runs behind each row of the table: their folders and W&B runs, to open from the
    report. A folder under the working directory is written relative to it, so a tracked
    comparison (a study's) reads the same on every clone compared from the repository root."""
    header = ["group", "seed", "run folder", "W&B run"]
    rows = [
        [
            comparison.group_name(group),
            value_label(run.results.get("seed")),
            run.name,
            str(run.results.get("wandb_run_id") or "-"),
        ]
        for group in comparison.groups
        for run in group.runs
    ]
    return header, rows
