"""The curve plots' shared drawing: one line per group with its seed band."""

from __future__ import annotations

from matplotlib.ticker import MaxNLocator

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
        seeds = "1 seed" if band.n == 1 else f"n={band.n}"  # one seed has no spread to show
        ax.plot(
            grid, band.center, color=color, marker="o", markersize=2.5, label=f"{name} ({seeds})"
        )
        if band.n > 1:
            ax.fill_between(grid, band.low, band.high, color=color, alpha=0.2, linewidth=0)
    if x == "step":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step" if x == "step" else "wall-clock time (s) from the first training step")
    ax.set_ylabel(comparison.metric)
    ax.set_title(_title(comparison))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    return to_png(fig)


def _title(comparison: Comparison) -> str:
    """Name the band only where some group has the seeds to draw one."""
    if all(band.n == 1 for band in comparison.curves.values()):
        return f"{comparison.metric}: 1 seed per group"
    spread = "min-max" if comparison.band == "minmax" else "±1 std"
    return f"{comparison.metric}: mean over seeds, band {spread}"
