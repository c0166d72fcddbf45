"""The figure of ``mixerlab maps``: one row of panels per run, one panel per layer and head.

Each panel is an L x L map, output position t down the rows and input position s along the
columns, the example's tokens as tick labels and the positions the task scores in red on the
rows, with its own colour bar (``_colors`` says which scale). A layer whose map is per head gets
a panel per head (at most ``MAX_HEADS``); one whose map is per channel shows the mean of the
channels' absolute weights; a gradient map is one panel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.colors import CenteredNorm, PowerNorm
from matplotlib.figure import Figure
from torch import Tensor

from mixerlab.experiments.compare.plots.base import new_figure, to_png
from mixerlab.experiments.maps.trained import Example, TrainedRun
from mixerlab.mixers.mixing_map import LayerMap, layer_maps

# The longest example drawn: an exact map is (heads or channels) x L x L floats per layer, and a
# gradient map L x probes backward passes.
MAX_LENGTH = 1024
MAX_HEADS = 4
MAX_LABELS = 32  # tick labels on an axis; a longer example labels every k-th position


def panels(layer: LayerMap) -> list[tuple[str, Tensor]]:
    """The titled (L, L) panels of one layer's map (the module docstring)."""
    kind = "exact" if layer.exact else "estimated"
    if layer.groups == "heads":
        shown = layer.weights[:MAX_HEADS]
        return [(f"layer {layer.layer} head {h}", w) for h, w in enumerate(shown)]
    if layer.groups == "gradient":
        return [(f"layer {layer.layer}: gradient ({kind})", layer.weights[0])]
    return [(f"layer {layer.layer}: mean |weight| of channels", layer.weights.abs().mean(0))]


def _label(ax, example: Example) -> None:
    tokens = example.tokens[0].tolist()
    step = max(1, -(-len(tokens) // MAX_LABELS))
    ticks = list(range(0, len(tokens), step))
    labels = [str(tokens[i]) for i in ticks]
    ax.set_xticks(ticks, labels, rotation=90, fontsize=6)
    ax.set_yticks(ticks, labels, fontsize=6)
    for tick, position in zip(ax.get_yticklabels(), ticks, strict=True):
        if bool(example.scored[position]):
            tick.set_color("red")


def draw_maps(runs: Sequence[tuple[str, list[LayerMap]]], example: Example) -> bytes:
    """The PNG of every run's maps of one example (rows: runs; columns: layers' panels)."""
    rows = [(name, [p for layer in maps for p in panels(layer)]) for name, maps in runs]
    columns = max(len(row) for _, row in rows)
    fig: Figure = new_figure(height=2.6 * len(rows) + 0.6, width=2.6 * columns + 0.6)
    grid = fig.subplots(len(rows), columns, squeeze=False)
    for (name, row), axes in zip(rows, grid, strict=True):
        for ax in axes[len(row) :]:
            ax.set_axis_off()
        for index, (ax, (title, weights)) in enumerate(zip(axes, row, strict=False)):
            values = weights.detach().float().numpy()
            image = ax.imshow(values, interpolation="nearest", **_colors(values))
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=5)
            ax.set_title(f"{name}\n{title}" if index == 0 else title, fontsize=7)
            _label(ax, example)
    fig.suptitle(
        "mixing maps: output position (rows) x input position (columns); red: scored",
        fontsize=min(12, 4 + 3 * columns),
    )
    return to_png(fig)


def _colors(values: np.ndarray) -> dict:
    """A signed map (gMLP's spatial matrix) on a diverging scale with zero white; a map that is
    never negative on a square-root scale from zero, so that weights a hundredth of the largest
    (a decay's tail beside a skip's diagonal) still show."""
    if values.min() < 0:
        return {"cmap": "RdBu_r", "norm": CenteredNorm(vcenter=0.0)}
    return {"cmap": "viridis", "norm": PowerNorm(0.5, vmin=0.0)}


def draw_runs(
    runs: Sequence[TrainedRun],
    example: Example,
    *,
    gradient: bool = False,
    probes: int | None = 8,
    layers: Sequence[int] | None = None,
) -> bytes:
    """The PNG of ``runs``' maps of ``example`` (``layer_maps``' arguments; the gradient
    estimate's probes drawn from seed 0, so a figure is the same every time); ValueError for an
    example over ``MAX_LENGTH`` tokens or a layer a model does not have."""
    length = example.tokens.shape[1]
    if length > MAX_LENGTH:
        raise ValueError(
            f"the example has {length} tokens, more than the {MAX_LENGTH} drawn: pick a shorter "
            "example"
        )
    generator = torch.Generator().manual_seed(0)
    drawn = []
    for run in runs:
        try:
            maps = layer_maps(
                run.model,
                example.tokens,
                gradient=gradient,
                probes=probes,
                generator=generator,
                layers=layers,
            )
        except ValueError as err:
            raise ValueError(f"{run.name}: {err}") from None
        drawn.append((run.name, maps))
    return draw_maps(drawn, example)
