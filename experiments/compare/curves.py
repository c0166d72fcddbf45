"""Curves: each run's validation metric over training (its ``metrics.csv``), and per group the
seeds' mean with a band around it."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from experiments.compare.runs import Run

BANDS = ("minmax", "std")
TRAIN_LOG = "train/loss"  # the metric every training step logs; its first row starts the clock


@dataclass(frozen=True)
class Curve:
    """A run's validation metric over training (from its metrics.csv), sorted by step."""

    step: np.ndarray
    wall_s: np.ndarray
    value: np.ndarray


@dataclass(frozen=True)
class Band:
    """A group's curve: the seeds' mean and spread at each shared step, the time to reach it,
    and ``n``, how many seeds it averages."""

    step: np.ndarray
    wall_s: np.ndarray
    center: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: int


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def read_curve(run: Run, metric: str) -> Curve:
    """The rows of the run's metrics.csv that logged ``metric``, sorted by step.

    Wall-clock time counts from the first training log (the first row with ``train/loss``), so
    the process's one-time setup (imports, data build), which a sequential sweep pays in its
    first job only, does not make that job's mixer look slower.
    """
    history = run.results.get("history")
    if not history:
        raise ValueError("results.json names no history file")
    path = run.dir / history
    if not path.is_file():
        raise ValueError(f"history {history} not found")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if metric not in (reader.fieldnames or []):
            raise ValueError(f"{history} has no column {metric}")
        rows = []
        start = None
        for row in reader:
            step, wall, value = (_float(row.get(k)) for k in ("step", "wall_s", metric))
            if start is None and _float(row.get(TRAIN_LOG)) is not None:
                start = wall
            if step is not None and value is not None:
                rows.append((step, math.nan if wall is None else wall, value))
    if not rows:
        raise ValueError(f"{history} logged no {metric} value")
    rows.sort(key=lambda r: r[0])
    step, wall, value = (np.array(column, dtype=float) for column in zip(*rows, strict=True))
    return Curve(step, wall - (start or 0.0), value)


def seed_band(curves: Sequence[Curve], band: str) -> Band | None:
    """Mean and band (``minmax`` or ``std``) over seeds, each seed interpolated onto the steps.

    The grid spans only the steps every seed covers, so every point averages all seeds. The
    wall-clock position of a step is the seeds' mean time to reach it: seeds evaluate at the same
    steps but never at the same seconds. Returns None when the seeds share no step range.
    """
    low, high = max(c.step[0] for c in curves), min(c.step[-1] for c in curves)
    grid = np.unique(np.concatenate([c.step for c in curves]))
    grid = grid[(grid >= low) & (grid <= high)]
    if not len(grid):
        return None
    ys = np.stack([np.interp(grid, c.step, c.value) for c in curves])
    wall = np.stack([np.interp(grid, c.step, c.wall_s) for c in curves]).mean(axis=0)
    center = ys.mean(axis=0)
    if band == "std":
        spread = ys.std(axis=0, ddof=1) if len(ys) > 1 else np.zeros_like(center)
        return Band(grid, wall, center, center - spread, center + spread, len(curves))
    return Band(grid, wall, center, ys.min(axis=0), ys.max(axis=0), len(curves))


def group_bands(
    runs_by_group: Mapping[str, Sequence[Run]], metric: str, band: str
) -> tuple[dict[str, Band], list[str]]:
    """Each group's band (by group name) from its runs' histories, and warnings naming the runs
    without a usable history and the groups left without a curve."""
    if band not in BANDS:
        raise ValueError(f"unknown band {band!r}: pick one of {', '.join(BANDS)}")
    problems = []
    curves: dict[str, list[Curve]] = {}
    for name, runs in runs_by_group.items():
        for run in runs:
            try:
                curves.setdefault(name, []).append(read_curve(run, metric))
            except (OSError, ValueError) as err:
                problems.append(f"{run.name} ({err})")
    bands = {}
    for name in runs_by_group:
        result = seed_band(curves[name], band) if curves.get(name) else None
        if result is not None:
            bands[name] = result
    warnings = []
    if problems:
        warnings.append(
            f"no {metric} curve for {len(problems)} run(s), left out of the curve plots: "
            f"{'; '.join(problems)}"
        )
    if skipped := [name for name in runs_by_group if name not in bands]:
        warnings.append(f"no curve drawn for: {', '.join(skipped)}")
    return bands, warnings
