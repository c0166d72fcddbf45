"""The curve plots' shared drawing: one line per group with its seed band, and the metric's
chance level as a dashed line."""

from __future__ import annotations

import math
from collections.abc import Iterable

from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from mixerlab.experiments.compare.comparison import Chance, Comparison
from mixerlab.experiments.compare.history import TRAIN_LOG
from mixerlab.experiments.compare.plots.base import group_colors, new_figure, to_png

X_LABELS = {"step": "step", "wall_s": "wall-clock time (s) from the first training step"}


def draw_chance(ax: Axes, levels: Iterable[Chance]) -> None:
    """Each chance level as a dashed line, named at the right edge."""
    for chance in levels:
        ax.axhline(chance.value, color="0.35", linestyle="--", linewidth=1)
        ax.annotate(
            chance.note(),
            xy=(1, chance.value),
            xycoords=("axes fraction", "data"),
            xytext=(-4, 3),
            textcoords="offset points",
            ha="right",
            fontsize=8,
            color="0.3",
        )


def draw_metric(ax: Axes, comparison: Comparison, metric: str, x: str) -> bool:
    """``metric`` vs ``step`` or ``wall_s`` (the seeds' mean time to each step) on ``ax``;
    returns whether any group had a curve to draw."""
    bands = comparison.curves.get(metric, {})
    colors = group_colors(comparison)
    drawn = False
    for group in comparison.groups:
        name = comparison.group_name(group)
        band = bands.get(name)
        if band is None:
            continue
        grid, color = getattr(band, x), colors[group.label]
        seeds = "1 seed" if band.n == 1 else f"n={band.n}"  # one seed has no spread to show
        marker = "o" if len(grid) <= 50 else None  # dense training logs read better as lines
        label = f"{name} ({seeds})"
        ax.plot(grid, band.center, color=color, marker=marker, markersize=2.5, label=label)
        if band.n > 1:
            ax.fill_between(grid, band.low, band.high, color=color, alpha=0.2, linewidth=0)
        drawn = True
    draw_chance(ax, comparison.chance_levels(metric))
    if x == "step":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    return drawn


def draw_curves(comparison: Comparison, x: str, metric: str | None = None) -> bytes:
    """One metric (default: the selection metric) in a figure of its own, with its legend."""
    metric = metric or comparison.metric
    fig = new_figure()
    ax = fig.subplots()
    if draw_metric(ax, comparison, metric, x):
        ax.legend(fontsize=8)
    ax.set_title(_title(comparison, metric))
    return to_png(fig)


def metric_figures(comparison: Comparison) -> dict[str, bytes]:
    """Every metric the runs logged against steps, by name (sorted), for the report's menu.

    Drawn for speed (a sweep logs a dozen metrics or more): fixed margins and no legend, which
    the report shows once for all of them (group colours are the same in every plot).
    """
    figures = {}
    for metric in sorted(comparison.metrics):
        fig = new_figure(constrained=False)
        ax = fig.subplots()
        draw_metric(ax, comparison, metric, "step")
        ax.set_title(_title(comparison, metric))
        figures[metric] = to_png(fig)
    return figures


def panel_metrics(comparison: Comparison) -> list[str]:
    """``train/loss``, then the selection metric on each validation set (``val/acc@<set>``
    for every set a task logs apart; the metric itself when there is one set)."""
    base = comparison.metric.split("@", 1)[0]
    per_set = [m for m in comparison.metrics if m.startswith(f"{base}@")]
    panels = [TRAIN_LOG] if TRAIN_LOG in comparison.curves else []
    return panels + (per_set or [comparison.metric])


def draw_panels(comparison: Comparison) -> bytes | None:
    """Training loss and the validation metric per validation set, a panel each, one legend."""
    metrics = panel_metrics(comparison)
    columns = 1 if len(metrics) == 1 else 2
    rows = math.ceil(len(metrics) / columns)
    fig = new_figure(height=1.0 + 3.0 * rows, width=10)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    drawn = [draw_metric(ax, comparison, m, "step") for ax, m in zip(axes, metrics, strict=False)]
    if not any(drawn):
        return None
    for ax, metric in zip(axes, metrics, strict=False):
        ax.set_title(_title(comparison, metric), fontsize=9)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    handles, labels = axes[drawn.index(True)].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8)
    return to_png(fig)


def _title(comparison: Comparison, metric: str) -> str:
    """Name the band only where some group has the seeds to draw one."""
    bands = comparison.curves.get(metric, {}).values()
    if all(band.n == 1 for band in bands):
        return f"{metric}: 1 seed per group"
    spread = "min-max" if comparison.band == "minmax" else "±1 std"
    return f"{metric}: mean over seeds, band {spread}"
