"""The comparison's data types: what ``aggregate`` and ``scaling`` build and every renderer and
plot reads. A leaf of the package: it imports only ``runs`` (one run's record) and ``ledger``
(what runs cost), so every module may import it and nothing circles.

A :class:`Comparison` is built once and never changed: frozen dataclasses, tuples and read-only
mappings, curves included, so renderers and plots may read it in any order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mixerlab.experiments.compare.ledger import Ledger
from mixerlab.experiments.compare.runs import Run


@dataclass(frozen=True)
class Stats:
    """Mean, sample std (ddof=1; None for one value), count and range of one quantity."""

    mean: float
    std: float | None
    n: int
    min: float
    max: float


@dataclass(frozen=True)
class Chance:
    """One metric's chance level: its value, a short name for plots ("chance", "unigram") and
    how the task derived it."""

    value: float
    label: str
    how: str

    def note(self) -> str:
        """As the tables and plots print it: ``chance 0.0167``."""
        return f"{self.label} {self.value:.4g}"


def common_chance(per_group: Sequence[Mapping[str, Chance]], metric: str) -> Chance | None:
    """The chance level of ``metric`` when every group has the same one, else None."""
    levels = [groups.get(metric) for groups in per_group]
    first = levels[0] if levels else None
    if first is None or any(c is None or not math.isclose(c.value, first.value) for c in levels):
        return None
    return first


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


@dataclass(frozen=True)
class Group:
    """Finished runs sharing the --by values; ``runs`` are those at the kept grid point
    (``point``: one value per --best-over key), ``grid`` the metric at every point the group ran,
    ``chance`` the chance levels the kept runs all record (by metric)."""

    label: tuple[str, ...]
    runs: tuple[Run, ...]
    metric: Stats
    point: tuple[Any, ...]
    grid: Mapping[tuple[Any, ...], Stats]
    params: Stats | None
    flops_per_token: Stats | None
    state_size: Stats | None  # None where no run records it (a mixer that does not report it)
    tokens_per_s: Stats | None
    wall_s: Stats | None
    also: Mapping[str, Stats | None]
    chance: Mapping[str, Chance]

    @property
    def picked(self) -> bool:
        """The group ran several grid points and one was picked."""
        return len(self.grid) > 1

    @property
    def seeds(self) -> list[Any]:
        return [run.results.get("seed") for run in self.runs]


@dataclass(frozen=True)
class Mark:
    """How a group's selection metric stands over its seeds (``significance`` says how and
    why): its 95% interval, its ``verdict`` against the best group of its task (``best``,
    ``separated``, ``within noise``, or ``untested``, with ``why`` in words), the test's p-value
    against the best, its rank and whether another group of its task shares that rank."""

    interval: tuple[float, float] | None
    verdict: str
    p: float | None
    rank: int | None
    tied: bool
    why: str | None


@dataclass(frozen=True)
class Scope:
    """What was compared, for the report's header: the experiment names, tasks and step budgets
    of the runs (config ``name``, ``task``, ``trainer.max_steps``), the days they were written,
    and the config keys that differ between the kept runs of different groups."""

    names: tuple[str, ...]
    tasks: tuple[str, ...]
    budgets: tuple[str, ...]
    dates: tuple[str, ...]
    differing: tuple[str, ...]


# run properties from results.json, with their axis labels
PROPERTIES = {
    "params": "parameters",
    "flops_per_token": "forward FLOPs per token",
    "state_size": "state size (numbers per sequence)",
    "tokens_per_s": "training tokens/s",
    "wall_s": "wall time (s)",
}


@dataclass(frozen=True)
class Point:
    """One config on a line: where it sits (``x``, over the kept runs), its runs at their best
    grid point (``group``), and the best value of each panel's metric (``y``)."""

    x: Stats
    group: Group
    y: Mapping[str, Stats | None]


@dataclass(frozen=True)
class Line:
    name: str
    points: tuple[Point, ...]  # by x


@dataclass(frozen=True)
class Scaling:
    """The metric against one x key: a panel per metric (the selection metric, then one per
    validation set when the runs log several), a line per --by group."""

    key: str
    panels: tuple[str, ...]
    lines: tuple[Line, ...]

    @property
    def label(self) -> str:
        return PROPERTIES.get(self.key, self.key)


@dataclass(frozen=True)
class Score:
    """A mean over parts: a suite task's score (over its settings) or the suite's (over its
    tasks). ``value`` is the mean of the parts' values; ``per_seed`` each seed's mean over the
    parts, for the seeds every part ran; ``interval`` the 95% Student-t interval over those
    per-seed means, None with ``why`` in words (``significance``'s rule: 3 seeds or more)."""

    value: float
    per_seed: Mapping[str, float]
    interval: tuple[float, float] | None
    why: str | None


@dataclass(frozen=True)
class SuiteRow:
    """One row of a suite's table (a --by group, tasks and settings apart): its score on each
    task it ran every setting of (``scores``), the settings it lacks of the others
    (``missing``), and the suite's score when it has every task of the table (``overall``).
    A ``stored`` row comes from a stored reference; ``stale`` says why its numbers may no
    longer hold (code changed since, a preset that differs from the runs here), empty if
    current."""

    name: str
    scores: Mapping[str, Score]
    missing: Mapping[str, tuple[str, ...]]
    overall: Score | None
    stored: bool = False
    stale: tuple[str, ...] = ()


@dataclass(frozen=True)
class SuiteTable:
    """A benchmark suite's score (MAD): per row, each task's mean over its settings of the best
    grid point's metric, and the mean over tasks. ``row_by`` are the --by keys that name a row,
    ``tasks`` the table's tasks, ``suite_tasks`` every task of the suite, ``settings`` each
    task's settings by label; ``reference`` says where stored rows came from, None without any."""

    name: str
    title: str
    row_by: tuple[str, ...]
    metric: str
    mode: str
    best_over: tuple[str, ...]
    tasks: tuple[str, ...]
    suite_tasks: tuple[str, ...]
    settings: Mapping[str, tuple[str, ...]]
    rows: tuple[SuiteRow, ...]
    reference: str | None = None


@dataclass(frozen=True)
class Comparison:
    """Everything the renderers and plots read: groups best first (within each task), runs that
    did not finish (running, killed, failed, interrupted, diverged), runs whose results.json
    cannot be used (each with its ``problem``), warnings, and the curves of every metric the
    kept runs logged (``curves[metric][group name]``, ``metrics`` in logging order) with their
    ``band`` kind; ``marks``: each group's interval, mark and rank by label; ``scaling``: the
    metric against each --x key (``scaling.add_scaling``); ``ledger``: the compute every
    readable run spent, finished or not; ``suite``: a benchmark suite's score when the runs are
    its tasks' (``suite.add_suite``)."""

    by: tuple[str, ...]
    metric: str
    mode: str
    best_over: tuple[str, ...]
    band: str
    groups: tuple[Group, ...]
    marks: Mapping[tuple[str, ...], Mark]
    unfinished: tuple[Run, ...]
    unreadable: tuple[Run, ...]
    also: tuple[str, ...]
    warnings: tuple[str, ...]
    curves: Mapping[str, Mapping[str, Band]]
    scope: Scope
    scaling: tuple[Scaling, ...] = ()
    ledger: Ledger = field(default_factory=Ledger)
    suite: SuiteTable | None = None

    @property
    def metrics(self) -> tuple[str, ...]:
        """Every metric some kept run logged a curve of, in logging order; a value logged once
        (a run's parameter count at step 0) is no curve."""
        return tuple(
            m for m, bands in self.curves.items() if any(len(b.step) > 1 for b in bands.values())
        )

    @property
    def one_seed_each(self) -> bool:
        """Every group has a single run: no spread to show, so legends say "1 seed"."""
        return all(group.metric.n == 1 for group in self.groups)

    def mark(self, group: Group) -> Mark:
        """The group's interval, mark against the best of its task and rank."""
        return self.marks[group.label]

    def group_name(self, group: Group) -> str:
        """Legend label: the value alone for one key, ``key=value`` pairs for several."""
        return label_name(self.by, group.label)

    def chance(self, metric: str) -> Chance | None:
        """The chance level of ``metric`` when every group has the same one."""
        return common_chance([group.chance for group in self.groups], metric)

    def chance_levels(self, metric: str) -> list[Chance]:
        """The distinct chance levels of ``metric`` over the groups (several when the groups
        differ in task or vocabulary), for the plots' dashed lines."""
        levels = [group.chance[metric] for group in self.groups if metric in group.chance]
        return list({(c.value, c.label): c for c in levels}.values())


def label_name(by: Sequence[str], label: tuple[str, ...]) -> str:
    if len(by) == 1:
        return label[0]
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(by, label, strict=True))
