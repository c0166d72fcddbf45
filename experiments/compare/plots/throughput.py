"""Training throughput per group: the speed side of every comparison."""

from __future__ import annotations

from mixerlab.experiments.compare.comparison import Comparison
from mixerlab.experiments.compare.plots.base import group_colors, new_figure, register_plot, to_png


@register_plot("throughput.png", "training throughput")
def throughput(comparison: Comparison) -> bytes:
    """Horizontal bars of training tokens/s per group (mean ± std over seeds)."""
    bars = [(g, g.tokens_per_s) for g in comparison.groups if g.tokens_per_s is not None]
    fig = new_figure(height=1.5 + 0.4 * max(len(bars), 1))
    ax = fig.subplots()
    colors = group_colors(comparison)
    for row, (group, tps) in enumerate(bars):
        ax.barh(row, tps.mean, xerr=tps.std or 0.0, color=colors[group.label], capsize=3)
    ax.set_yticks(range(len(bars)), [comparison.group_name(g) for g, _ in bars])
    ax.invert_yaxis()
    ax.set_xlabel("training tokens/s")
    ax.set_title(
        "throughput (1 seed)" if comparison.one_seed_each else "throughput (mean ± std over seeds)"
    )
    ax.grid(axis="x", alpha=0.3)
    return to_png(fig)
