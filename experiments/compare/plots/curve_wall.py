"""The validation metric against wall-clock time: which mixer gets there first, not in fewest
steps; a step sits at the seeds' mean time to reach it."""

from __future__ import annotations

from mixerlab.experiments.compare.comparison import Comparison
from mixerlab.experiments.compare.plots._draw_curves import draw_curves
from mixerlab.experiments.compare.plots.base import register_plot


@register_plot("curve_wall.png", "validation metric vs wall-clock time")
def curve_wall(comparison: Comparison) -> bytes:
    return draw_curves(comparison, "wall_s")
