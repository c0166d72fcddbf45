"""The cells of a suite's table (MAD), formatted once for the terminal, markdown and HTML, and
its raw numbers for ``suite_score.csv``: a row per mixer (stored ones marked), each task's score
with its interval, the suite's score with its interval, and the notes that say what is missing
or stale."""

from __future__ import annotations

import csv
import io

from mixerlab.experiments.compare.comparison import Score, SuiteRow, SuiteTable
from mixerlab.experiments.compare.significance import MIN_SEEDS

CSV_FILE = "suite_score.csv"


def _interval(score: Score) -> str:
    if score.interval is None:
        return f"none ({score.why})"
    low, high = score.interval
    return f"[{low:.4g}, {high:.4g}]"


def _task_cell(row: SuiteRow, task: str, table: SuiteTable) -> str:
    """The task's score and interval; ``-`` and what it lacks where the row ran not every
    setting."""
    if task in row.missing:
        return f"- (lacks {len(row.missing[task])} of {len(table.settings[task])} settings)"
    score = row.scores[task]
    return f"{score.value:.4g} {_interval(score)}"


def _source(row: SuiteRow) -> str:
    if not row.stored:
        return "here"
    return "stored, stale" if row.stale else "stored"


def _overall_title(table: SuiteTable) -> str:
    """``MAD score``, with how many of the suite's tasks it averages when not all."""
    if set(table.suite_tasks) <= set(table.tasks):
        return table.title
    return f"{table.title} ({len(table.tasks)} of {len(table.suite_tasks)} tasks)"


def suite_heading(table: SuiteTable) -> str:
    better = "higher" if table.mode == "max" else "lower"
    return f"{table.title}: {table.metric} ({better} is better) by {', '.join(table.row_by)}"


def suite_rows(table: SuiteTable) -> tuple[list[str], list[list[str]]]:
    """Header and cells: the row, where it comes from, each task's score, the suite's score."""
    header = [
        ", ".join(table.row_by) or "runs",
        "source",
        *(f"{task} ({len(table.settings[task])} settings)" for task in table.tasks),
        _overall_title(table),
        "95% interval",
        "seeds",
    ]
    rows = []
    for row in table.rows:
        overall = row.overall
        rows.append(
            [
                row.name,
                _source(row),
                *(_task_cell(row, task, table) for task in table.tasks),
                "-" if overall is None else f"{overall.value:.4g}",
                "-" if overall is None else _interval(overall),
                "-" if overall is None else str(len(overall.per_seed)),
            ]
        )
    return header, rows


def suite_caption(table: SuiteTable) -> str:
    """How the numbers are made."""
    grid = " x ".join(table.best_over)
    return (
        f"A task's score: the mean over its settings of the best {table.metric} over the grid"
        f" ({grid}; the grid point with the best mean over the seeds every point ran, as in the"
        f" table above), each setting at that point's seeds. {table.title}: the mean over the"
        " tasks. 95% interval: each seed's mean over the settings (over the task scores), then"
        f" Student-t over those seeds, the seeds every setting (task) ran; fewer than {MIN_SEEDS}"
        " such seeds: none. The settings are fixed, not sampled, so only seeds vary."
    )


def suite_notes(table: SuiteTable) -> list[str]:
    """What the table cannot show in a cell: where stored rows come from and why a stored row
    is stale, what a row lacks, and the suite's tasks no run is of."""
    notes = []
    if table.reference:
        notes.append(f"stored rows: {table.reference}")
    for row in table.rows:
        if row.stale:
            notes.append(f"{row.name} (stored) is stale: {'; '.join(row.stale)}")
    for row in table.rows:
        for task, lacking in row.missing.items():
            kind = "stored" if row.stored else "here"
            notes.append(f"{row.name} ({kind}) lacks settings of {task}: {'; '.join(lacking)}")
    if absent := [task for task in table.suite_tasks if task not in table.tasks]:
        notes.append(f"tasks of {table.name} no run is of: {', '.join(absent)}")
    return notes


def _number(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _score_cells(score: Score | None) -> list[str]:
    """value, interval low and high, seeds: empty where there is no score or no interval."""
    if score is None:
        return ["", "", "", ""]
    low, high = score.interval or (None, None)
    return [_number(score.value), _number(low), _number(high), str(len(score.per_seed))]


def render_suite_csv(table: SuiteTable) -> str:
    """A row per table row, full precision: each task's score and interval, then the suite's."""
    parts = [*table.tasks, table.name]
    columns = ["row", "stored", "stale"]
    columns += [f"{part}_{stat}" for part in parts for stat in ("score", "low", "high", "seeds")]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in table.rows:
        cells = [row.name, str(row.stored).lower(), "; ".join(row.stale)]
        for task in table.tasks:
            cells += _score_cells(row.scores.get(task))
        writer.writerow([*cells, *_score_cells(row.overall)])
    return buffer.getvalue()
