"""A benchmark suite's score: MAD's (Poli et al. 2024), the one suite so far.

MAD's protocol: each task has several *settings* (its baseline and the variants that change one
thing: vocabulary, length, training examples, noise, tokens to copy); each setting is run over
a learning-rate x weight-decay grid; a task's score is the mean over its settings of the best
accuracy over the grid, and the MAD score the mean over the tasks. ``mixerlab compare`` adds
this table by itself when every finished run is of a suite's tasks (names ``mad_*``), with the
suite's metric and grid as the defaults of --metric and --best-over: the task names already say
how the runs are read, and the table adds to the usual one rather than replace it.

**A setting** is the task and its data: ``task.name`` and every ``task.datamodule`` key but the
seed (each run's replicate), ``cache_dir`` and ``num_workers`` (where and how the data is loaded,
not what it is) and ``batch_size`` (how the model is fed: the training protocol's, which a stored
reference checks, not the task's). Two runs at one setting saw examples of one distribution.

**The best grid point** of each setting and row is ``aggregate.select_point``'s, the rule of
every comparison; the setting's value at each seed is that point's run of the seed.

**Intervals of a mean over settings**: each seed's score is its mean over the settings (a task)
or over the task scores (the suite), and the 95% Student-t interval is over those per-seed
scores, for the seeds every part ran (``significance``'s rule: 3 or more, else none and why).
Settings are the protocol's fixed list, not a sample, so their spread is no noise: only the
seeds vary from one replication of the whole suite to the next, and a seed's runs of the
different settings are its one replication.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import numpy as np

from mixerlab.experiments.compare.aggregate import TASK_KEYS, summarize, summarize_group
from mixerlab.experiments.compare.code_version import TASKS, registered
from mixerlab.experiments.compare.comparison import (
    Comparison,
    Score,
    SuiteRow,
    SuiteTable,
    label_name,
)
from mixerlab.experiments.compare.runs import Run, lookup, value_label
from mixerlab.experiments.compare.significance import t_interval, untested_reason
from mixerlab.experiments.run.config_values import flatten

DATAMODULE = "task.datamodule"
SETTING_FREE = ("seed", "cache_dir", "num_workers", "batch_size")  # see the module docstring


@dataclass(frozen=True)
class Suite:
    """A benchmark suite: its name (``--reference mad``), its score's title, the prefix of its
    tasks' names, and its protocol's metric and grid keys (the defaults of --metric and
    --best-over for its runs)."""

    name: str
    title: str
    prefix: str
    metric: str
    best_over: tuple[str, ...]

    @property
    def tasks(self) -> tuple[str, ...]:
        """Every registered task of the suite, read from the task modules' source."""
        return tuple(t for t in registered(TASKS, "register_task") if t.startswith(self.prefix))


MAD = Suite("mad", "MAD score", "mad_", "val/acc", ("optim.lr", "optim.weight_decay"))
SUITES = {suite.name: suite for suite in (MAD,)}


@dataclass(frozen=True)
class SettingResult:
    """One row's result at one setting: the kept grid point and its metric at each seed."""

    point: tuple[Any, ...]
    seeds: Mapping[str, float]


# a row's results: task -> setting label -> result
Results = Mapping[str, Mapping[str, SettingResult]]


@dataclass(frozen=True)
class Entry:
    """A row before it is scored: its name, results, and whether it is stored and stale."""

    name: str
    results: Results
    stored: bool = False
    stale: tuple[str, ...] = ()


def find_suite(runs: Sequence[Run]) -> Suite | None:
    """The suite every finished run's task belongs to; None when any is of no suite."""
    tasks = {
        str(run.results.get("task"))
        for run in runs
        if run.problem is None and run.status == "finished"
    }
    for suite in SUITES.values():
        if tasks and all(task.startswith(suite.prefix) for task in tasks):
            return suite
    return None


def setting(run: Run) -> dict[str, Any]:
    """The run's setting: its ``task.datamodule`` keys but the bookkeeping ones, by short name."""
    data = lookup(run.results, DATAMODULE)
    leaves = flatten(data) if isinstance(data, dict) else ()
    return {key: value for key, value in leaves if key.split(".")[0] not in SETTING_FREE}


def setting_label(run: Run) -> str:
    """The setting as one text, keys sorted: ``num_train=12800, seq_len=128, vocab_size=16``."""
    return ", ".join(f"{k}={value_label(v)}" for k, v in sorted(setting(run).items())) or "default"


def varying_setting_keys(runs: Sequence[Run]) -> list[str]:
    """The setting keys (dotted) whose value differs between runs of one task: the --by keys
    that give each setting its own row in the usual table."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_task.setdefault(str(run.results.get("task")), []).append(setting(run))
    varying = {
        key
        for settings in by_task.values()
        for key in set().union(*settings)
        if len({value_label(s.get(key)) for s in settings}) > 1
    }
    return [f"{DATAMODULE}.{key}" for key in sorted(varying)]


def row_keys(by: Sequence[str]) -> list[str]:
    """The --by keys that name a suite row: all but the task and its settings."""
    return [key for key in by if key not in TASK_KEYS and not key.startswith("task.")]


def row_name(keys: Sequence[str], run: Run) -> str:
    """A row's name: its values of ``keys``, as the usual table names a group."""
    label = tuple(value_label(lookup(run.results, key)) for key in keys)
    return label_name(keys, label) if keys else "all runs"


def _seed_values(runs: Sequence[Run], metric: str) -> dict[str, float]:
    """The metric by seed; a seed run twice at one point (a config --by misses) averages."""
    by_seed: dict[str, list[float]] = {}
    for run in runs:
        by_seed.setdefault(value_label(run.results.get("seed")), []).append(run.best(metric))
    return {seed: float(np.mean(values)) for seed, values in sorted(by_seed.items())}


def row_runs(comparison: Comparison, runs: Sequence[Run], suite: Suite) -> dict[str, list[Run]]:
    """The finished runs of ``suite``'s tasks by row name."""
    keys = row_keys(comparison.by)
    rows: dict[str, list[Run]] = {}
    for run in runs:
        finished = run.problem is None and run.status == "finished"
        if finished and str(run.results.get("task")).startswith(suite.prefix):
            rows.setdefault(row_name(keys, run), []).append(run)
    return rows


def _results(comparison: Comparison, runs: Sequence[Run]) -> Results:
    """One row's results: each (task, setting)'s best grid point and its metric by seed."""
    cells: dict[str, dict[str, list[Run]]] = {}
    for run in runs:
        task = cells.setdefault(str(run.results["task"]), {})
        task.setdefault(setting_label(run), []).append(run)
    metric, mode = comparison.metric, comparison.mode
    results = {}
    for task, settings in sorted(cells.items()):
        results[task] = {}
        for label, members in sorted(settings.items()):
            group = summarize_group((), members, metric, mode, comparison.best_over, ())
            results[task][label] = SettingResult(group.point, _seed_values(group.runs, metric))
    return results


def run_entries(comparison: Comparison, runs: Sequence[Run], suite: Suite) -> list[Entry]:
    """The rows of the runs here."""
    rows = row_runs(comparison, runs, suite)
    return [Entry(name, _results(comparison, members)) for name, members in rows.items()]


def mean_score(parts: Sequence[tuple[float, Mapping[str, float]]]) -> Score:
    """The mean of ``parts`` (each a value and its value by seed) and its interval over the
    per-seed means of the seeds every part ran (the module docstring says why)."""
    shared = sorted(set.intersection(*(set(seeds) for _, seeds in parts)))
    per_seed = {seed: float(np.mean([seeds[seed] for _, seeds in parts])) for seed in shared}
    stats = summarize(list(per_seed.values())) if per_seed else None
    interval = t_interval(stats) if stats else None
    if stats is None:
        why = "no seed ran every part"
    else:
        why = None if interval else untested_reason(stats)
    value = float(np.mean([value for value, _ in parts]))
    return Score(value, MappingProxyType(per_seed), interval, why)


def _row(entry: Entry, tasks: Sequence[str], settings: Mapping[str, tuple[str, ...]]) -> SuiteRow:
    scores, missing = {}, {}
    for task in tasks:
        have = entry.results.get(task, {})
        if lacking := tuple(label for label in settings[task] if label not in have):
            missing[task] = lacking
            continue
        scores[task] = mean_score(
            [(float(np.mean(list(r.seeds.values()))), r.seeds) for r in have.values()]
        )
    complete = not missing
    overall = mean_score([(s.value, s.per_seed) for s in scores.values()]) if complete else None
    return SuiteRow(
        entry.name,
        MappingProxyType(scores),
        MappingProxyType(missing),
        overall,
        entry.stored,
        entry.stale,
    )


def _order(row: SuiteRow, mode: str) -> tuple[bool, float, bool, str]:
    """Rows with a suite score first, best first (NaN last); stored after a run of one name."""
    value = row.overall.value if row.overall else math.nan
    if math.isnan(value):
        return True, 0.0, row.stored, row.name
    return False, -value if mode == "max" else value, row.stored, row.name


def suite_table(
    comparison: Comparison, suite: Suite, entries: Sequence[Entry], reference: str | None = None
) -> SuiteTable:
    """Score ``entries``: a task's settings are those any row ran, so a row that lacks one has
    no score on that task (and no suite score) rather than a mean over fewer settings."""
    settings: dict[str, set[str]] = {}
    for entry in entries:
        for task, results in entry.results.items():
            settings.setdefault(task, set()).update(results)
    tasks = tuple(sorted(settings))
    ordered = {task: tuple(sorted(labels)) for task, labels in sorted(settings.items())}
    rows = sorted(
        (_row(e, tasks, ordered) for e in entries), key=lambda r: _order(r, comparison.mode)
    )
    return SuiteTable(
        name=suite.name,
        title=suite.title,
        row_by=tuple(row_keys(comparison.by)),
        metric=comparison.metric,
        mode=comparison.mode,
        best_over=comparison.best_over,
        tasks=tasks,
        suite_tasks=suite.tasks,
        settings=MappingProxyType(ordered),
        rows=tuple(rows),
        reference=reference,
    )


def add_suite(comparison: Comparison, runs: Sequence[Run], suite: Suite) -> Comparison:
    """``comparison`` with ``suite``'s table over the finished runs of its tasks."""
    table = suite_table(comparison, suite, run_entries(comparison, runs, suite))
    return replace(comparison, suite=table)
