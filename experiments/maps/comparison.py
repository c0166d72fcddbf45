"""The mixing maps of a comparison (``mixerlab compare --maps``): for each task, one run of
every group drawn side by side on one validation example.

A group is drawn by its best run (by the comparison's metric) that kept a checkpoint; a group
none of whose runs did (a study's clone keeps only the records) is named as not drawn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from mixerlab.experiments.compare.aggregate import rank_key
from mixerlab.experiments.compare.comparison import Comparison, Group
from mixerlab.experiments.compare.runs import Run
from mixerlab.experiments.maps.draw import draw_runs
from mixerlab.experiments.maps.trained import (
    checkpoint_of,
    load_run,
    undrawn,
    validation_example,
)


@dataclass(frozen=True)
class MapsFigure:
    """One task's figure: its PNG (None when no group could be drawn), its file name, the runs
    drawn (by group) and the groups left out, each with why."""

    task: str
    file: str
    png: bytes | None
    drawn: tuple[str, ...]
    left_out: tuple[str, ...]

    @property
    def description(self) -> str:
        return (
            f"mixing maps on {self.task}: each group's best run with a checkpoint, every layer's "
            "map of one validation example (output positions down, input positions across, "
            "scored positions in red)"
        )


def _task_key(run: Run) -> str:
    return json.dumps(run.results["config"]["task"], sort_keys=True)


def task_labels(tasks: list[dict]) -> list[tuple[str, str]]:
    """Each task's name and figure file; tasks sharing a name are told apart by the datamodule
    settings in which they differ (a scaling grid's lengths)."""
    if len(tasks) == 1:
        return [(tasks[0]["name"], "maps.png")]
    labels = []
    for index, task in enumerate(tasks):
        twins = [t["datamodule"] for t in tasks if t["name"] == task["name"]]
        differ = sorted(k for k in task["datamodule"] if len({str(t.get(k)) for t in twins}) > 1)
        settings = ", ".join(f"{k}={task['datamodule'][k]}" for k in differ)
        name = f"{task['name']} ({settings})" if settings else task["name"]
        suffix = f"_{index}" if settings else ""
        labels.append((name, f"maps_{task['name']}{suffix}.png"))
    return labels


def _drawn_run(group: Group, metric: str, mode: str) -> Run | None:
    """The group's best run by ``metric`` that kept a checkpoint (NaN last)."""
    ranked = sorted(group.runs, key=lambda run: rank_key(run.best(metric), mode))
    return next((run for run in ranked if checkpoint_of(run.dir) is not None), None)


def comparison_maps(
    comparison: Comparison, example: int, probes: int | None = 8
) -> list[MapsFigure]:
    """Each task's figure (the module docstring); ValueError when the example does not exist."""
    tasks: dict[str, list[Group]] = {}
    for group in comparison.groups:
        tasks.setdefault(_task_key(group.runs[0]), []).append(group)
    labels = task_labels([json.loads(key) for key in tasks])
    figures = []
    for groups, (name, file) in zip(tasks.values(), labels, strict=True):
        chosen, left_out = [], []
        for group in groups:
            run = _drawn_run(group, comparison.metric, comparison.mode)
            label = comparison.group_name(group)
            why = None if run is None else undrawn(run.results["config"])
            if why:
                left_out.append(f"{label}: {why}")
            elif run is None:
                left_out.append(f"{label}: no run kept checkpoints/best.ckpt or last.ckpt")
            else:
                seed = run.results.get("seed")
                chosen.append(replace(load_run(run.dir), name=f"{label} (seed {seed})"))
        png = None
        if chosen:
            shown = validation_example(chosen[0].data, example)
            png = draw_runs(chosen, shown, probes=probes)
        drawn = tuple(run.name for run in chosen)
        figures.append(MapsFigure(name, file, png, drawn, tuple(left_out)))
    return figures
