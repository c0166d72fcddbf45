"""``report.html``: the comparison as one self-contained page (no network, no external files).

The header says what was compared, the table ranks the groups, and a menu switches between the
curves of every metric the runs logged: one embedded PNG per metric, shown or hidden by a short
inline script. The URL hash names the metric shown (``report.html#metric=val%2Facc``), so a
link opens the page on that metric. A script error is written into the page itself (the box at
the top), where a reader sees it and the browser test finds it. Without scripts every figure
shows, one under the other.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.colors import to_hex

from mixerlab.experiments.compare.comparison import Comparison
from mixerlab.experiments.compare.plots import Plot
from mixerlab.experiments.compare.plots.base import group_colors
from mixerlab.experiments.compare.suite_cells import (
    suite_caption,
    suite_heading,
    suite_notes,
    suite_rows,
)
from mixerlab.experiments.compare.tables import (
    caption,
    chance_notes,
    compute_lines,
    run_rows,
    scope_lines,
    selection_heading,
    selection_notes,
    table_rows,
    title,
    unfinished_rows,
    unreadable_rows,
)

if TYPE_CHECKING:
    from mixerlab.experiments.maps.comparison import MapsFigure

STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
    "text-align:right}th{background:#f3f3f3}.caption{color:#555}img{max-width:100%}"
    "pre{white-space:pre-wrap;background:#f7f7f7;padding:8px}#script-errors{color:#b00}"
    "select{font-size:1em;margin-left:.5em}.key{margin-right:1.2em;white-space:nowrap}"
    ".swatch{display:inline-block;width:1.6em;height:.3em;margin-right:.4em;vertical-align:middle}"
)
# Before anything else runs: any script error lands in the page, visible and testable.
CATCH_ERRORS = """
window.addEventListener("error", function (event) {
  var box = document.getElementById("script-errors");
  box.hidden = false;
  box.textContent += "script error: " + event.message + "\\n";
});
"""
# The metric menu: show the figure of the chosen metric; the URL hash keeps the choice.
METRIC_MENU = """
(function () {
  var menu = document.getElementById("metric");
  var figures = document.querySelectorAll("figure[data-metric]");
  function show(metric) {
    var found = false;
    figures.forEach(function (figure) {
      figure.hidden = figure.dataset.metric !== metric;
      found = found || !figure.hidden;
    });
    if (found) menu.value = metric;
    return found;
  }
  function linked() {
    var match = /^#metric=(.+)$/.exec(window.location.hash);
    try {
      return match ? decodeURIComponent(match[1]) : null;
    } catch (malformed) {
      return null;
    }
  }
  menu.addEventListener("change", function () {
    show(menu.value);
    window.location.hash = "metric=" + encodeURIComponent(menu.value);
  });
  window.addEventListener("hashchange", function () { show(linked()); });
  if (!show(linked())) show(menu.value);
})();
"""


def _html_table(header: list[str], rows: list[list[str]], folders: str | None = None) -> str:
    """An HTML table; the cells of the column named ``folders`` link to those folders."""

    def cell(column: str, value: str) -> str:
        text = html.escape(value)
        if column == folders:
            text = f"<a href='{html.escape(Path(value).resolve().as_uri())}'>{text}</a>"
        return f"<td>{text}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(cell(c, v) for c, v in zip(header, row, strict=True)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _png(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{encoded}'>"


def _items(lines: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"


def _legend(comparison: Comparison) -> str:
    """The groups' colours, once for every figure of the menu (which draw no legend)."""
    colors = group_colors(comparison)
    keys = []
    for group in comparison.groups:
        seeds = "1 seed" if len(group.runs) == 1 else f"n={len(group.runs)}"
        swatch = f"<span class='swatch' style='background:{to_hex(colors[group.label])}'></span>"
        name = html.escape(comparison.group_name(group))
        keys.append(f"<span class='key'>{swatch}{name} ({seeds})</span>")
    return "".join(keys)


def _metric_menu(comparison: Comparison, figures: Mapping[str, bytes]) -> str:
    """The menu of every logged metric and a figure per metric, the selection metric first
    shown."""
    esc = html.escape
    # the selection metric; the training loss when it was validated once (no curve to draw)
    chosen = next((m for m in (comparison.metric, "train/loss") if m in figures), None)
    options = "".join(
        f"<option value='{esc(m)}'{' selected' if m == chosen else ''}>{esc(m)}</option>"
        for m in figures
    )
    shown = "".join(
        f"<figure data-metric='{esc(metric)}'>{_png(png, f'{metric} vs step')}</figure>"
        for metric, png in figures.items()
    )
    return (
        "<h2>Curves</h2><p><label for='metric'>metric</label><select id='metric'>"
        f"{options}</select> (every metric the runs logged, against steps)</p>"
        f"<p class='legend'>{_legend(comparison)}</p>{shown}"
    )


def _maps_section(maps: Sequence[MapsFigure]) -> str:
    """Each task's mixing maps with what they show, the runs drawn and the groups left out."""
    esc = html.escape
    parts = ["<h2 id='mixing-maps'>Mixing maps</h2>"]
    for figure in maps:
        parts.append(f"<figure class='maps' data-task='{esc(figure.task)}'>")
        if figure.png is not None:
            parts.append(_png(figure.png, f"mixing maps on {figure.task}"))
        drawn = "; ".join(figure.drawn) or "none"
        parts.append(f"<figcaption>{esc(figure.description)}. Drawn: {esc(drawn)}.")
        if figure.left_out:
            parts.append(f" Not drawn: {esc('; '.join(figure.left_out))}.")
        parts.append("</figcaption></figure>")
    return "".join(parts)


def render_html(
    comparison: Comparison,
    plots: Mapping[Plot, bytes],
    figures: Mapping[str, bytes],
    maps: Sequence[MapsFigure] = (),
) -> str:
    """report.html: tables, notes, full error texts, the metric menu over ``figures`` (PNG by
    metric), the registered ``plots`` and the mixing ``maps`` (``compare --maps``), every image
    embedded."""
    esc = html.escape
    parts = [
        "<pre id='script-errors' hidden></pre>",
        f"<h1>{esc(title(comparison))}</h1>",
        "<ul class='scope'>"
        + "".join(f"<li>{esc(line)}</li>" for line in scope_lines(comparison))
        + "</ul>",
        _html_table(*table_rows(comparison)),
        f"<p class='caption'>{esc(caption(comparison))}</p>",
    ]
    if (suite := comparison.suite) is not None:
        parts.append(f"<h2>{esc(suite_heading(suite))}</h2>{_html_table(*suite_rows(suite))}")
        parts.append(f"<p class='caption'>{esc(suite_caption(suite))}</p>")
        if notes := suite_notes(suite):
            parts.append(_items(notes))
    if lines := compute_lines(comparison):
        parts.append(f"<h2>Compute spent</h2>{_items(lines)}")
    if notes := chance_notes(comparison):
        parts.append(f"<h2>Chance levels</h2>{_items(notes)}")
    if figures:
        parts.append(_metric_menu(comparison, figures))
    if notes := selection_notes(comparison):
        parts.append(f"<h2>{esc(selection_heading(comparison))}</h2>{_items(notes)}")
    if comparison.unfinished:
        parts.append("<h2>Failed and unfinished runs (not in the table)</h2>")
        parts.append(_html_table(*unfinished_rows(comparison)))
        for run in comparison.unfinished:
            if run.results.get("error"):
                parts.append(
                    f"<details><summary>{esc(run.name)}: full error</summary>"
                    f"<pre>{esc(str(run.results['error']))}</pre></details>"
                )
    if comparison.unreadable:
        parts.append("<h2>Unreadable runs (left out)</h2>")
        parts.append(_html_table(*unreadable_rows(comparison)))
    parts.append("<h2>Runs in the table</h2>")
    parts.append(_html_table(*run_rows(comparison), folders="run folder"))
    if comparison.warnings:
        parts.append(f"<h2>Warnings</h2>{_items(list(comparison.warnings))}")
    parts.append("<h2>Plots</h2>")
    for plot, png in plots.items():
        parts.append(f"<figure>{_png(png, plot.description)}")
        parts.append(f"<figcaption>{esc(plot.description)}</figcaption></figure>")
    if maps:
        parts.append(_maps_section(maps))
    script = f"<script>{METRIC_MENU}</script>" if figures else ""
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>mixerlab compare: {esc(title(comparison))}</title><style>{STYLE}</style>"
        f"<script>{CATCH_ERRORS}</script></head>"
        f"<body>{''.join(parts)}{script}</body></html>\n"
    )
