"""Chance levels: what a model that learned nothing scores, read from the runs' results.json.

The train app records them per metric (``"chance": {"val/acc": {"value", "label", "how"}}``,
from the task's declared baselines). A group gets a metric's chance level when all its kept runs
agree on it; runs made before chance levels were recorded simply have none. A group is flagged
*at chance* when its mean does not beat the chance level by more than its seed spread: the
sample std over seeds, and at least one point (0.01 for a metric up to 1, such as an accuracy;
1% of the chance level beyond, such as a loss). A group with one seed has only that point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from mixerlab.experiments.compare.comparison import Chance, Stats
from mixerlab.experiments.compare.runs import Run


def run_chance(run: Run) -> dict[str, Chance]:
    """A run's chance levels by metric; entries that are not well formed are skipped."""
    levels = {}
    for metric, entry in (run.results.get("chance") or {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("value"), (int, float)):
            label, how = str(entry.get("label") or "chance"), str(entry.get("how") or "")
            levels[metric] = Chance(float(entry["value"]), label, how)
    return levels


def group_chance(runs: Sequence[Run]) -> dict[str, Chance]:
    """The chance levels every run of a group records with the same value."""
    levels = [run_chance(run) for run in runs]
    if not levels:
        return {}
    shared = {}
    for metric, first in levels[0].items():
        others = [level.get(metric) for level in levels[1:]]
        if all(o is not None and math.isclose(o.value, first.value) for o in others):
            shared[metric] = first
    return shared


def _one_point(chance: float) -> float:
    """The smallest margin that counts as beating chance: 0.01 up to 1, 1% beyond."""
    return 0.01 * max(1.0, abs(chance))


def at_chance(stats: Stats, chance: Chance, mode: str) -> bool:
    """The group's mean is no better than ``chance`` by more than its seed spread (see the
    module docstring); a diverged (NaN) mean is at chance too."""
    if math.isnan(stats.mean):
        return True
    gain = chance.value - stats.mean if mode == "min" else stats.mean - chance.value
    return gain <= max(stats.std or 0.0, _one_point(chance.value))


def describe(chance: Mapping[str, Chance], metrics: Sequence[str]) -> list[str]:
    """One line per metric with a chance level, for the notes under the tables."""
    return [
        f"{metric}: {chance[metric].note()} ({chance[metric].how})"
        if chance[metric].how
        else f"{metric}: {chance[metric].note()}"
        for metric in metrics
        if metric in chance
    ]
