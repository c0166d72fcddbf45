"""The runs' histories: each run's logged metrics over training (its ``metrics.csv``: training
and validation metrics, every validation set) as curves, and per group and metric the seeds' mean
with a band around it (the comparison's ``curves``)."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mixerlab.experiments.compare.comparison import Band
from mixerlab.experiments.compare.runs import Run

BANDS = ("minmax", "std")
TRAIN_LOG = "train/loss"  # the metric every training step logs; its first row starts the clock
NOT_METRICS = frozenset({"step", "wall_s", "epoch"})  # metrics.csv's columns that are axes


@dataclass(frozen=True)
class Curve:
    """One metric of a run over training (from its metrics.csv), sorted by step."""

    step: np.ndarray
    wall_s: np.ndarray
    value: np.ndarray


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def read_history(run: Run) -> dict[str, Curve]:
    """Every metric column of the run's metrics.csv as a curve sorted by step (a column that
    logged no value has an empty one).

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
        reader = csv.reader(handle)
        header = next(reader, [])
        rows = [[_float(cell) for cell in row] for row in reader]
    index = {name: i for i, name in enumerate(header)}
    step_at, wall_at, train_at = (index.get(k) for k in ("step", "wall_s", TRAIN_LOG))

    def column(i: int | None) -> list[float | None]:
        return [row[i] if i is not None and i < len(row) else None for row in rows]

    steps, walls = column(step_at), column(wall_at)
    start = next((w for w, t in zip(walls, column(train_at), strict=True) if t is not None), None)
    curves = {}
    for name, i in index.items():
        if name in NOT_METRICS:
            continue
        points = sorted(
            (
                (step, math.nan if wall is None else wall - (start or 0.0), value)
                for step, wall, value in zip(steps, walls, column(i), strict=True)
                if step is not None and value is not None
            ),
            key=lambda point: point[0],
        )
        step, wall, value = np.array(points, dtype=float).reshape(-1, 3).T  # (3, rows)
        curves[name] = Curve(step, wall, value)
    return curves


def _lacking(run: Run, history: Mapping[str, Curve], metric: str) -> str | None:
    """Why the history has no ``metric`` curve, None when it has one."""
    if metric not in history:
        return f"{run.results['history']} has no column {metric}"
    if not len(history[metric].step):
        return f"{run.results['history']} logged no {metric} value"
    return None


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
    runs_by_group: Mapping[str, Sequence[Run]], selected: str, band: str
) -> tuple[dict[str, dict[str, Band]], list[str]]:
    """Every logged metric's band per group (``bands[metric][group name]``), each run's
    history read once, and warnings naming the runs without a usable ``selected`` curve and the
    groups left without one. Other metrics are logged by some runs only (an MoE's aux loss), so
    a group without them is no news."""
    if band not in BANDS:
        raise ValueError(f"unknown band {band!r}: pick one of {', '.join(BANDS)}")
    problems = []
    histories: dict[str, list[dict[str, Curve]]] = {}
    for name, runs in runs_by_group.items():
        for run in runs:
            try:
                history = read_history(run)
            except (OSError, ValueError) as err:
                problems.append(f"{run.name} ({err})")
                continue
            if reason := _lacking(run, history, selected):
                problems.append(f"{run.name} ({reason})")
            histories.setdefault(name, []).append(history)
    metrics = list(dict.fromkeys(m for hs in histories.values() for h in hs for m in h))
    bands: dict[str, dict[str, Band]] = {}
    for metric in metrics:
        for name, group_histories in histories.items():
            curves = [h[metric] for h in group_histories if metric in h and len(h[metric].step)]
            if curves and (result := seed_band(curves, band)) is not None:
                bands.setdefault(metric, {})[name] = result
    warnings = []
    if problems:
        warnings.append(
            f"no {selected} curve for {len(problems)} run(s), left out of the curve plots: "
            f"{'; '.join(problems)}"
        )
    if skipped := [name for name in runs_by_group if name not in bands.get(selected, {})]:
        warnings.append(f"no curve drawn for: {', '.join(skipped)}")
    return bands, warnings
