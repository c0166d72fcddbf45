"""The comparison's files: ``comparison.csv`` (raw numbers), ``comparison.md``, every registered
plot's PNG and a self-contained ``report.html``."""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

from experiments.compare.aggregate import Comparison
from experiments.compare.plots import Plot, render_plots
from experiments.compare.runs import value_label
from experiments.compare.tables import (
    caption,
    lr_notes,
    run_rows,
    scope_lines,
    table_rows,
    title,
    unfinished_rows,
)
from lightning_modules.io import write_atomic

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
        "lr",
        "lr_picked",
        "lr_grid",
        "n",
        "seeds",
        f"{metric}_mean",
        f"{metric}_std",
        f"{metric}_min",
        f"{metric}_max",
        *(f"{name}_final_{stat}" for name in comparison.also for stat in STATS),
        "params",
        "flops_per_token",
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
        lr_grid = ";".join(
            f"{value_label(lr)}:{_number(s.mean)}:n={s.n}" for lr, s in g.lr_grid.items()
        )
        writer.writerow(
            [
                *g.label,
                "" if g.lr is None else g.lr,
                str(g.lr_picked).lower(),
                lr_grid,
                g.metric.n,
                ";".join(value_label(s) for s in g.seeds),
                _number(g.metric.mean),
                _number(g.metric.std),
                _number(g.metric.min),
                _number(g.metric.max),
                *(
                    _number(getattr(g.also[name], stat) if g.also[name] else None)
                    for name in comparison.also
                    for stat in STATS
                ),
                _number(g.params.mean if g.params else None),
                _number(g.flops_per_token.mean if g.flops_per_token else None),
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


def render_markdown(comparison: Comparison, plots: Sequence[Plot]) -> str:
    """comparison.md: the table, lr selection, runs left out, warnings, links to the plots."""
    parts = [
        f"# {title(comparison)}",
        "",
        *(f"- {line}" for line in scope_lines(comparison)),
        "",
        _md_table(*table_rows(comparison)),
        "",
        caption(comparison),
    ]
    if notes := lr_notes(comparison):
        parts += ["", "## Learning-rate selection", "", *(f"- {note}" for note in notes)]
    if comparison.unfinished:
        parts += ["", "## Failed and unfinished runs (not in the table)", ""]
        parts.append(_md_table(*unfinished_rows(comparison)))
    parts += ["", "## Runs in the table", "", _md_table(*run_rows(comparison))]
    if comparison.warnings:
        parts += ["", "## Warnings", "", *(f"- {w}" for w in comparison.warnings)]
    parts += ["", "## Plots", "", *(f"![{plot.description}]({plot.file})" for plot in plots)]
    return "\n".join(parts) + "\n"


def _html_table(header: list[str], rows: list[list[str]], folders: str | None = None) -> str:
    """An HTML table; the cells of the column named ``folders`` link to those folders."""

    def cell(column: str, value: str) -> str:
        text = html.escape(value)
        if column == folders:
            text = f"<a href='{html.escape(Path(value).as_uri())}'>{text}</a>"
        return f"<td>{text}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(cell(c, v) for c, v in zip(header, row, strict=True)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(comparison: Comparison, plots: Mapping[Plot, bytes]) -> str:
    """report.html, self-contained: tables, notes, full error texts and base64-embedded plots."""
    esc = html.escape
    parts = [
        f"<h1>{esc(title(comparison))}</h1>",
        "<ul class='scope'>"
        + "".join(f"<li>{esc(line)}</li>" for line in scope_lines(comparison))
        + "</ul>",
        _html_table(*table_rows(comparison)),
        f"<p class='caption'>{esc(caption(comparison))}</p>",
    ]
    if notes := lr_notes(comparison):
        items = "".join(f"<li>{esc(n)}</li>" for n in notes)
        parts.append(f"<h2>Learning-rate selection</h2><ul>{items}</ul>")
    if comparison.unfinished:
        parts.append("<h2>Failed and unfinished runs (not in the table)</h2>")
        parts.append(_html_table(*unfinished_rows(comparison)))
        for run in comparison.unfinished:
            if run.results.get("error"):
                parts.append(
                    f"<details><summary>{esc(run.name)}: full error</summary>"
                    f"<pre>{esc(str(run.results['error']))}</pre></details>"
                )
    parts.append("<h2>Runs in the table</h2>")
    parts.append(_html_table(*run_rows(comparison), folders="run folder"))
    if comparison.warnings:
        items = "".join(f"<li>{esc(w)}</li>" for w in comparison.warnings)
        parts.append(f"<h2>Warnings</h2><ul>{items}</ul>")
    parts.append("<h2>Plots</h2>")
    for plot, png in plots.items():
        data = base64.b64encode(png).decode("ascii")
        description = esc(plot.description)
        parts.append(f"<figure><img alt='{description}' src='data:image/png;base64,{data}'>")
        parts.append(f"<figcaption>{description}</figcaption></figure>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}th{background:#f3f3f3}.caption{color:#555}img{max-width:100%}"
        "pre{white-space:pre-wrap;background:#f7f7f7;padding:8px}"
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>mixerlab compare: {esc(title(comparison))}</title><style>{style}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )


def write_outputs(comparison: Comparison, out: Path) -> list[Path]:
    """Write csv, md, every registered plot's PNG and report.html into ``out``; returns the
    paths written."""
    out.mkdir(parents=True, exist_ok=True)
    plots = render_plots(comparison)
    files: dict[str, bytes | str] = {
        "comparison.csv": render_csv(comparison),
        "comparison.md": render_markdown(comparison, list(plots)),
        **{plot.file: png for plot, png in plots.items()},
        "report.html": render_html(comparison, plots),
    }
    for name, data in files.items():
        write_atomic(out / name, data)
    return [out / name for name in files]
