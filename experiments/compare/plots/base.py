"""The plot contract: a plot is a function from the (immutable) comparison to PNG bytes, or None
when it has nothing to draw, registered under its output file name and a one-line description.

    @register_plot("curve_step.png", "validation metric vs step")
    def curve_step(comparison: Comparison) -> bytes | None: ...

The markdown and HTML reports and the output folder list every registered plot, so a new plot is
one file in this folder and nothing else.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mixerlab.experiments.compare.comparison import Comparison

Draw = Callable[[Comparison], bytes | None]


@dataclass(frozen=True)
class Plot:
    """A registered plot: where it is written, what it shows, and how it is drawn."""

    file: str
    description: str
    draw: Draw


_REGISTRY: dict[str, Plot] = {}


def register_plot(file: str, description: str) -> Callable[[Draw], Draw]:
    """Decorator: write ``draw(comparison)``'s PNG as ``file`` in every comparison's output."""
    if not file.endswith(".png") or "/" in file:
        raise ValueError(f"plot file {file!r}: name a PNG in the output folder, e.g. 'loss.png'")

    def decorate(draw: Draw) -> Draw:
        if (taken := _REGISTRY.get(file)) is not None:
            raise ValueError(
                f"plot {file} is registered twice: by {taken.draw.__module__}.{taken.draw.__name__}"
                f" and {draw.__module__}.{draw.__name__}; give one of them another file name"
            )
        _REGISTRY[file] = Plot(file, description, draw)
        return draw

    return decorate


def registered_plots() -> list[Plot]:
    """Every registered plot, by file name."""
    return [_REGISTRY[file] for file in sorted(_REGISTRY)]


def render_plots(comparison: Comparison) -> dict[Plot, bytes]:
    """The PNG of every registered plot that has something to draw, in registry order."""
    drawn = {plot: plot.draw(comparison) for plot in registered_plots()}
    return {plot: png for plot, png in drawn.items() if png is not None}


def new_figure(height: float = 4.5, width: float = 7, constrained: bool = True) -> Figure:
    """A figure of the report's width (inches), drawn without a GUI backend. Constrained
    layout fits every label but is half the drawing time; without it the margins are fixed."""
    if constrained:
        return Figure(figsize=(width, height), layout="constrained")
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.11, top=0.93)
    return fig


def to_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return buffer.getvalue()


def group_colors(comparison: Comparison) -> dict[tuple[str, ...], str]:
    """One color per group, the same in every plot."""
    palette = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    return {g.label: palette[i % len(palette)] for i, g in enumerate(comparison.groups)}
