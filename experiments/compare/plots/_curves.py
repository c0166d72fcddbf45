"""The curve plots' shared drawing: one line per group with its seed band."""

from __future__ import annotations

from experiments.compare.aggregate import Comparison
from experiments.compare.plots.base import group_colors, new_figure, to_png


def draw_curves(comparison: Comparison, x: str) -> bytes:
    """Metric vs ``step`` or ``wall_s`` (the seeds' mean time to each step)."""
    fig = new_figure()
    ax = fig.subplots()
    colors = group_colors(comparison)
    for group in comparison.groups:
        name = comparison.group_name(group)
        band = comparison.curves.get(name)
        if band is None:
            continue
        grid, color = getattr(band, x), colors[group.label]
        ax.plot(
            grid, band.center, color=color, marker="o", markersize=2.5, label=f"{name} (n={band.n})"
        )
        if band.n > 1:
            ax.fill_between(grid, band.low, band.high, color=color, alpha=0.2, linewidth=0)
    spread = "min-max" if comparison.band == "minmax" else "±1 std"
    ax.set_xlabel("step" if x == "step" else "wall-clock time (s), mean over seeds")
    ax.set_ylabel(comparison.metric)
    ax.set_title(f"{comparison.metric}: mean over seeds, band {spread}")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    return to_png(fig)
