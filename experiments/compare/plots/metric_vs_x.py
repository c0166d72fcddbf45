"""The metric against a scaling axis (``mixerlab compare --x KEY``, parameters by default): a
mixer's result next to what it costs, or how it grows with width, as Zoology's and Mamba's
figures read. The points and lines come from ``mixerlab.experiments.compare.scaling``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib
from matplotlib.axes import Axes
from matplotlib.ticker import NullFormatter

from mixerlab.experiments.compare.comparison import PROPERTIES, Comparison, Scaling, Stats
from mixerlab.experiments.compare.plots._draw_curves import draw_chance
from mixerlab.experiments.compare.plots.base import new_figure, register_plot, to_png

COLUMNS = 3  # panels per row; a scaling with more panels wraps onto further rows
MAX_TICKS = 8  # a config key's values as the ticks of a log axis, up to this many
SPREADS = {"minmax": "mean, min-max over seeds", "std": "mean ± std over seeds"}


def _spread(stats: Sequence[Stats], band: str) -> list[list[float]]:
    """Error bar lengths below and above each mean: the seeds' range or one std."""
    if band == "std":
        return [[s.std or 0.0 for s in stats]] * 2
    return [[s.mean - s.min for s in stats], [s.max - s.mean for s in stats]]


def _log_if_wide(values: Sequence[float]) -> bool:
    """Log scale where the positive values span a decade or more."""
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) >= 10 * min(finite)


def _panel(ax: Axes, comparison: Comparison, scaling: Scaling, metric: str) -> None:
    """One metric against the scaling's key: a line per group with the seeds' spread as error
    bars (on x too where it varies over seeds, as throughput does), chance dashed."""
    palette = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    xs_all, ys_all, chances = [], [], {}
    for i, line in enumerate(scaling.lines):
        points = [p for p in line.points if p.y.get(metric) is not None]
        if not points:
            continue
        x = [p.x for p in points]
        y = [p.y[metric] for p in points]
        x_spread = _spread(x, comparison.band) if any(s.max > s.min for s in x) else None
        ax.errorbar(
            [s.mean for s in x],
            [s.mean for s in y],
            yerr=_spread(y, comparison.band),
            xerr=x_spread,
            fmt="o-",
            color=palette[i % len(palette)],
            capsize=3,
            markersize=4,
            label=line.name,
        )
        xs_all += [s.mean for s in x]
        ys_all += [s.mean for s in y]
        for point in points:
            if (chance := point.group.chance.get(metric)) is not None:
                chances[chance.value, chance.label] = chance
    draw_chance(ax, chances.values())
    if _log_if_wide(xs_all):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        if scaling.key not in PROPERTIES and len(set(xs_all)) <= MAX_TICKS:  # the swept values
            ax.set_xticks(sorted(set(xs_all)), [f"{x:g}" for x in sorted(set(xs_all))])
    if comparison.mode == "min" and _log_if_wide(ys_all):  # losses span decades; accuracies not
        ax.set_yscale("log")
    spread = "1 seed" if comparison.one_seed_each else SPREADS[comparison.band]
    ax.set_xlabel(scaling.label)
    ax.set_ylabel(f"best {metric.split('@', 1)[0]} ({spread})")
    ax.set_title(metric if metric == comparison.metric else metric.split("@", 1)[1], fontsize=10)
    ax.grid(alpha=0.3)


@register_plot("metric_vs_x.png", "metric vs --x (default: parameters), a line per group")
def metric_vs_x(comparison: Comparison) -> bytes | None:
    """A row of panels per x key: the selection metric, then each validation set's."""
    scalings = [s for s in comparison.scaling if s.lines]
    if not scalings:
        return None
    columns = min(COLUMNS, max(len(s.panels) for s in scalings))
    rows = [math.ceil(len(s.panels) / columns) for s in scalings]
    fig = new_figure(height=0.6 + 3.2 * sum(rows), width=max(7.0, 3.6 * columns))
    axes = fig.subplots(sum(rows), columns, squeeze=False)
    row = 0
    for scaling, n_rows in zip(scalings, rows, strict=True):
        cells = axes[row : row + n_rows].ravel()
        for ax, metric in zip(cells, scaling.panels, strict=False):
            _panel(ax, comparison, scaling, metric)
        for ax in cells[len(scaling.panels) :]:
            ax.set_visible(False)
        cells[0].legend(fontsize=8)
        row += n_rows
    return to_png(fig)
