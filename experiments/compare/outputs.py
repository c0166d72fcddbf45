"""The comparison's files: ``comparison.csv`` (raw numbers), ``comparison.md``, every registered
plot's PNG and a self-contained ``report.html`` (``report``)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mixerlab.experiments.compare.chance import at_chance
from mixerlab.experiments.compare.comparison import Comparison
from mixerlab.experiments.compare.plots import Plot, render_plots
from mixerlab.experiments.compare.plots._draw_curves import metric_figures
from mixerlab.experiments.compare.report import render_html
from mixerlab.experiments.compare.runs import value_label
from mixerlab.experiments.compare.suite_cells import (
    CSV_FILE,
    render_suite_csv,
    suite_caption,
    suite_heading,
    suite_notes,
    suite_rows,
)
from mixerlab.experiments.compare.tables import (
    caption,
    chance_notes,
    compute_lines,
    point_label,
    run_rows,
    scope_lines,
    selection_heading,
    selection_notes,
    table_rows,
    title,
    unfinished_rows,
    unreadable_rows,
)
from mixerlab.lightning_modules.record import write_atomic

if TYPE_CHECKING:
    from mixerlab.experiments.maps.comparison import MapsFigure

STATS = ("mean", "std")


def _number(value: float | None) -> str:
    """Full precision; integers without a decimal point; empty when missing."""
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render_csv(comparison: Comparison) -> str:
    """One row per group with raw numbers (full precision), for scripts."""
    metric = comparison.metric
    columns = [
        *comparison.by,
        *(f"{key}_best" for key in comparison.best_over),
        "picked",
        "grid",
        "n",
        "seeds",
        f"{metric}_mean",
        f"{metric}_std",
        f"{metric}_min",
        f"{metric}_max",
        f"{metric}_ci95_low",
        f"{metric}_ci95_high",
        f"{metric}_vs_best",
        f"{metric}_p_vs_best",
        f"{metric}_rank",
        f"{metric}_chance",
        f"{metric}_at_chance",
        *(f"{name}_final_{stat}" for name in comparison.also for stat in STATS),
        "params",
        "flops_per_token",
        "state_size",
        "tokens_per_s_mean",
        "tokens_per_s_std",
        "wall_s_mean",
        "wall_s_std",
        "runs",
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for g in comparison.groups:
        grid = ";".join(
            f"{point_label(point)}:{_number(s.mean)}:n={s.n}" for point, s in g.grid.items()
        )
        chance = g.chance.get(metric)
        mark = comparison.mark(g)
        low, high = mark.interval or (None, None)
        writer.writerow(
            [
                *g.label,
                *("" if value is None else value for value in g.point),
                str(g.picked).lower(),
                grid,
                g.metric.n,
                ";".join(value_label(s) for s in g.seeds),
                _number(g.metric.mean),
                _number(g.metric.std),
                _number(g.metric.min),
                _number(g.metric.max),
                _number(low),
                _number(high),
                mark.verdict,
                _number(mark.p),
                "" if mark.rank is None else mark.rank,
                _number(chance.value if chance else None),
                "" if chance is None else str(at_chance(g.metric, chance, comparison.mode)).lower(),
                *(
                    _number(getattr(g.also[name], stat) if g.also[name] else None)
                    for name in comparison.also
                    for stat in STATS
                ),
                _number(g.params.mean if g.params else None),
                _number(g.flops_per_token.mean if g.flops_per_token else None),
                _number(g.state_size.mean if g.state_size else None),
                _number(g.tokens_per_s.mean if g.tokens_per_s else None),
                _number(g.tokens_per_s.std if g.tokens_per_s else None),
                _number(g.wall_s.mean if g.wall_s else None),
                _number(g.wall_s.std if g.wall_s else None),
                ";".join(run.name for run in g.runs),
            ]
        )
    return buffer.getvalue()


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def cells(values: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    return "\n".join([cells(header), "|" + "---|" * len(header), *map(cells, rows)])


def render_markdown(
    comparison: Comparison, plots: Sequence[Plot], maps: Sequence[MapsFigure] = ()
) -> str:
    """comparison.md: the table, the compute spent, the grid points kept, runs left out (unfinished,
    unreadable), warnings, links to the plots and the mixing maps."""
    parts = [
        f"# {title(comparison)}",
        "",
        *(f"- {line}" for line in scope_lines(comparison)),
        "",
        _md_table(*table_rows(comparison)),
        "",
        caption(comparison),
    ]
    if (suite := comparison.suite) is not None:
        parts += ["", f"## {suite_heading(suite)}", "", _md_table(*suite_rows(suite)), ""]
        parts += [suite_caption(suite), "", *(f"- {note}" for note in suite_notes(suite))]
    if lines := compute_lines(comparison):
        parts += ["", "## Compute spent", "", *(f"- {line}" for line in lines)]
    if notes := chance_notes(comparison):
        parts += ["", "## Chance levels", "", *(f"- {note}" for note in notes)]
    if notes := selection_notes(comparison):
        parts += ["", f"## {selection_heading(comparison)}", "", *(f"- {note}" for note in notes)]
    if comparison.unfinished:
        parts += ["", "## Failed and unfinished runs (not in the table)", ""]
        parts.append(_md_table(*unfinished_rows(comparison)))
    if comparison.unreadable:
        parts += ["", "## Unreadable runs (left out)", "", _md_table(*unreadable_rows(comparison))]
    parts += ["", "## Runs in the table", "", _md_table(*run_rows(comparison))]
    if comparison.warnings:
        parts += ["", "## Warnings", "", *(f"- {w}" for w in comparison.warnings)]
    parts += ["", "## Plots", "", *(f"![{plot.description}]({plot.file})" for plot in plots)]
    if maps:
        parts += ["", "## Mixing maps"]
    for figure in maps:
        parts += ["", f"### {figure.task}", ""]
        if figure.png is not None:
            parts += [f"![{figure.description}]({figure.file})", ""]
        parts += [f"- drawn: {run}" for run in figure.drawn]
        parts += [f"- not drawn: {why}" for why in figure.left_out]
    return "\n".join(parts) + "\n"


def write_outputs(comparison: Comparison, out: Path, maps: Sequence[MapsFigure] = ()) -> list[Path]:
    """Write csv, md, every registered plot's PNG, the mixing maps' PNGs and report.html into
    ``out``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    plots = render_plots(comparison)
    files: dict[str, bytes | str] = {
        "comparison.csv": render_csv(comparison),
        "comparison.md": render_markdown(comparison, list(plots), maps),
        **({CSV_FILE: render_suite_csv(comparison.suite)} if comparison.suite else {}),
        **{plot.file: png for plot, png in plots.items()},
        **{figure.file: figure.png for figure in maps if figure.png is not None},
        "report.html": render_html(comparison, plots, metric_figures(comparison), maps),
    }
    for name, data in files.items():
        write_atomic(out / name, data)
    return [out / name for name in files]
