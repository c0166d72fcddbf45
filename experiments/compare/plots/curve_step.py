"""The validation metric against training steps, one line per group with its seed band."""

from __future__ import annotations

from mixerlab.experiments.compare.comparison import Comparison
from mixerlab.experiments.compare.plots._draw_curves import draw_curves
from mixerlab.experiments.compare.plots.base import register_plot


@register_plot("curve_step.png", "validation metric vs step")
def curve_step(comparison: Comparison) -> bytes:
    return draw_curves(comparison, "step")
