"""The best metric against parameter count: a mixer's result next to what it costs in size."""

from __future__ import annotations

from experiments.compare.aggregate import Comparison
from experiments.compare.plots.base import group_colors, new_figure, register_plot, to_png


@register_plot("metric_vs_params.png", "metric vs parameter count")
def metric_vs_params(comparison: Comparison) -> bytes:
    """Scatter of the metric (mean ± std, or the one seed) against parameter count, labelled."""
    fig = new_figure()
    ax = fig.subplots()
    colors = group_colors(comparison)
    points = [(g, g.params.mean) for g in comparison.groups if g.params is not None]
    for group, params in points:
        y = group.metric.mean
        yerr = group.metric.std or 0.0
        ax.errorbar(params, y, yerr=yerr, fmt="o", color=colors[group.label], capsize=3)
        ax.annotate(
            comparison.group_name(group),
            (params, y),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    sizes = [params for _, params in points if params > 0]
    if sizes and max(sizes) > 10 * min(sizes):
        ax.set_xscale("log")
    ax.margins(x=0.15, y=0.1)  # room for the labels
    ax.set_xlabel("parameters")
    spread = "1 seed" if comparison.one_seed_each else "mean ± std"
    ax.set_ylabel(f"best {comparison.metric} ({spread})")
    ax.set_title(f"{comparison.metric} vs parameter count")
    ax.grid(alpha=0.3)
    return to_png(fig)
