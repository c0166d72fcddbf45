"""Training and validation side by side: ``train/loss`` in a panel of its own, then the
selection metric on each validation set (MQAR's configurations, induction's lengths), so a
mixer that learns the training set but fails the longer test sets shows where."""

from __future__ import annotations

from mixerlab.experiments.compare.comparison import Comparison
from mixerlab.experiments.compare.plots._draw_curves import draw_panels
from mixerlab.experiments.compare.plots.base import register_plot


@register_plot("curve_panels.png", "training loss and the metric per validation set")
def curve_panels(comparison: Comparison) -> bytes | None:
    return draw_panels(comparison)
