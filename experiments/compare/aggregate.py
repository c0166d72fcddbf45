"""Aggregation: group finished runs, keep each group's best grid point (by default its best
learning rate), summarise over seeds, mark each group against the best of its task.

No row ever averages over tasks: when the finished runs are of several tasks and no --by key
separates them, ``task`` is added in front of the keys and a warning says so. Adding rather than
refusing, because a sweep over tasks writes one folder and its per-task rows are what the user
wants; refusing would only make them retype --by. Groups of one task stay together, best first
within each task, as ranks across tasks compare numbers of different things.

The result is a :class:`~mixerlab.experiments.compare.comparison.Comparison`.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any

import numpy as np

from mixerlab.experiments.compare.chance import group_chance
from mixerlab.experiments.compare.comparison import (
    Comparison,
    Group,
    Scope,
    Stats,
    label_name,
)
from mixerlab.experiments.compare.config_diff import differing_keys
from mixerlab.experiments.compare.history import group_bands
from mixerlab.experiments.compare.ledger import runs_spent
from mixerlab.experiments.compare.runs import (
    RESULT_KEYS,
    Run,
    check_key,
    lookup,
    value_label,
)
from mixerlab.experiments.compare.significance import mark_groups
from mixerlab.lightning_modules.metric_names import metric_mode
from mixerlab.lightning_modules.record import RESULTS_FILE

# results.json fields averaged over a group's runs
NUMBERS = ("params", "flops_per_token", "state_size", "tokens_per_s", "wall_s")
TASK_KEYS = ("task", "task.name")  # --by keys that keep tasks apart
BEST_OVER = ("optim.lr",)  # the swept keys whose best grid point a group keeps, by default


def _distinct(runs: Sequence[Run], key: str) -> tuple[str, ...]:
    return tuple(sorted({value_label(lookup(run.results, key)) for run in runs}))


def _run_date(run: Run) -> str:
    """The day the run last wrote its record (its ``updated_at``, UTC); for a record without
    one, its file's modification day; ``-`` when neither can be read. The record's own time
    comes first: a fresh clone of a committed study gives every file the day of the clone."""
    updated = run.results.get("updated_at")
    if isinstance(updated, str) and len(updated) >= 10:
        return updated[:10]
    try:
        mtime = (run.dir / RESULTS_FILE).stat().st_mtime
    except OSError:
        return "-"
    return datetime.fromtimestamp(mtime).date().isoformat()


def _grouped_by(key: str, by: Sequence[str]) -> bool:
    """``key`` is (part of) what the groups differ by: a --by key itself, or, for a component
    named by --by (``mixer``, ``task``, ``mixer.name``), any of its hyper-parameters."""
    for by_key in by:
        named = by_key in RESULT_KEYS or by_key.endswith(".name")
        if key == by_key or (named and key.startswith(by_key.split(".")[0] + ".")):
            return True
    return False


def _scope(runs: Sequence[Run], groups: Sequence[Group], by: Sequence[str]) -> Scope:
    kept = [run for group in groups for run in group.runs]
    differing = differing_keys(kept, {"seed"}) if len(groups) > 1 else []
    return Scope(
        names=_distinct(runs, "name"),
        tasks=_distinct(runs, "task"),
        budgets=_distinct(runs, "trainer.max_steps"),
        dates=tuple(sorted({_run_date(run) for run in runs})),
        differing=tuple(key for key in differing if not _grouped_by(key, by)),
    )


def summarize(values: Sequence[float]) -> Stats:
    """Stats over seeds; NaN (a diverged run) propagates into the mean so it cannot win."""
    array = np.asarray(values, dtype=float)
    with np.errstate(over="ignore", invalid="ignore"):  # inf or 1e308: the std is inf or NaN
        std = float(np.std(array, ddof=1)) if len(array) > 1 else None
    return Stats(float(array.mean()), std, len(array), float(array.min()), float(array.max()))


def _field_stats(runs: Sequence[Run], name: str) -> Stats | None:
    values = [float(v) for run in runs if (v := run.results.get(name)) is not None]
    return summarize(values) if values else None


def _final_stats(runs: Sequence[Run], metric: str) -> Stats | None:
    values = [v for run in runs if (v := run.final(metric)) is not None]
    return summarize(values) if values else None


def rank_key(mean: float, mode: str) -> float:
    """Sort key of a metric value under ``mode``, smaller is better; NaN ranks last."""
    if math.isnan(mean):
        return math.inf
    return mean if mode == "min" else -mean


def _value_order(value: Any) -> tuple[bool, float, str]:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return value is None, float(value) if numeric else math.inf, str(value)


def grid_point(run: Run, keys: Sequence[str]) -> tuple[Any, ...]:
    """The run's grid point, its value of each --best-over key, as a dict key: a list or an
    object (a hand-edited config) by its label."""
    values = (lookup(run.results, key) for key in keys)
    return tuple(value_label(v) if isinstance(v, (dict, list)) else v for v in values)


def select_point(
    runs: Sequence[Run], metric: str, mode: str, keys: Sequence[str]
) -> tuple[tuple[Any, ...], dict[tuple[Any, ...], Stats]]:
    """The grid point (a combination of the values of ``keys``) with the best mean metric over
    the seeds every point was run with, and the metric at every point over all its seeds.

    The rule: rank the points by their mean over the shared seeds (all seeds when they share
    none), keep the best, and report that point over all its seeds. Zoology's protocol runs the
    grid at one seed, then more seeds at the best point only: ranked on all their seeds, a point
    with one lucky seed would beat the best point's mean of several. The kept point's seeds then
    carry the group's interval and marks (``significance``); the seeds that chose it are among
    them, so with few seeds and a wide grid its mean leans optimistic, which fresh seeds at the
    chosen point remove."""
    by_point: dict[tuple[Any, ...], list[Run]] = {}
    for run in runs:
        by_point.setdefault(grid_point(run, keys), []).append(run)
    grid = {
        point: summarize([run.best(metric) for run in by_point[point]])
        for point in sorted(by_point, key=lambda point: tuple(map(_value_order, point)))
    }
    shared = set.intersection(
        *({run.results.get("seed") for run in group} for group in by_point.values())
    )
    ranked = {
        point: summarize([run.best(metric) for run in group if run.results.get("seed") in shared])
        if shared
        else grid[point]
        for point, group in by_point.items()
    }
    best = min(grid, key=lambda point: rank_key(ranked[point].mean, mode))
    return best, grid


def _mixed_warning(name: str, runs: Sequence[Run], ignore: set[str]) -> str | None:
    """Say when a group's runs are not seed replicates of one config (a --by key is missing)."""
    seeds = [run.results.get("seed") for run in runs]
    params = {run.results.get("params") for run in runs}
    repeated = sorted({value_label(s) for s in seeds if seeds.count(s) > 1})
    if not repeated and len(params) <= 1:
        return None
    reason = f"seed {', '.join(repeated)} repeated" if repeated else "parameter counts differ"
    differ = differing_keys(runs, ignore)
    if differ:
        return (
            f"group {name}: {reason}; config keys that differ: {', '.join(differ[:8])}. "
            "Add the ones that matter to --by so each row is one config"
        )
    return f"group {name}: {reason}, with identical configs (the same run repeated?)"


def expand_also(runs: Sequence[Run], patterns: Sequence[str]) -> list[str]:
    """The final metrics named by ``patterns`` (fnmatch globs), in pattern then logging order."""
    have = list(dict.fromkeys(name for run in runs for name in run.results.get("metrics") or {}))
    names: list[str] = []
    for pattern in patterns:
        matched = [name for name in have if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            raise ValueError(
                f"--also {pattern}: no finished run logged a metric by that name. "
                f"Metrics the runs have: {', '.join(have) or 'none'}"
            )
        names += [name for name in matched if name not in names]
    return names


def _check_metric(finished: Sequence[Run], metric: str) -> None:
    lacking = [run.name for run in finished if metric not in (run.results.get("best") or {})]
    if lacking:
        have = sorted(set().union(*[(run.results.get("best") or {}) for run in finished]))
        raise ValueError(
            f"metric {metric} is missing from 'best' in {len(lacking)} of {len(finished)} finished "
            f"runs: {', '.join(lacking[:10])}{' ...' if len(lacking) > 10 else ''}. "
            f"Metrics the runs have: {', '.join(have) or 'none'}; pick one with --metric, or pass "
            "only the runs that log it"
        )


def summarize_group(
    label: tuple[str, ...],
    members: Sequence[Run],
    metric: str,
    mode: str,
    best_over: Sequence[str],
    also: Sequence[str],
) -> Group:
    """One row: the group's best grid point, and its kept runs summarised."""
    point, grid = select_point(members, metric, mode, best_over)
    kept = tuple(run for run in members if grid_point(run, best_over) == point)
    return Group(
        label=label,
        runs=kept,
        metric=grid[point],
        point=point,
        grid=MappingProxyType(grid),
        **{name: _field_stats(kept, name) for name in NUMBERS},
        also=MappingProxyType({name: _final_stats(kept, name) for name in also}),
        chance=MappingProxyType(group_chance(kept)),
    )


def _apart_by_task(by: Sequence[str], finished: Sequence[Run]) -> tuple[list[str], str | None]:
    """``by`` with ``task`` in front when the finished runs are of several tasks and no --by key
    separates them, and the warning that says so."""
    tasks = sorted({value_label(lookup(run.results, "task")) for run in finished})
    if len(tasks) < 2 or any(key in TASK_KEYS for key in by):
        return list(by), None
    by = ["task", *by]
    return by, (
        f"the finished runs are of {len(tasks)} tasks ({', '.join(tasks)}): grouped by task too "
        f"(--by {','.join(by)}), as a mean over tasks would mean nothing"
    )


def build_comparison(
    runs: Sequence[Run],
    by: Sequence[str],
    metric: str,
    mode: str | None,
    best_over: Sequence[str] = BEST_OVER,
    also: Sequence[str] = (),
    band: str = "minmax",
    apart: Sequence[str] = (),
) -> Comparison:
    """Group finished runs by ``by``, keep each group's best grid point of the ``best_over``
    keys (``select_point``), aggregate over seeds, mark each group against the best of its task
    (``significance``), and read the kept runs' histories for the seed bands of every logged
    metric (``band``: ``minmax`` or ``std``).

    ``mode``: ``min`` or ``max``; None reads it from the metric's name. ``also``: further metrics
    (globs allowed) to aggregate over the kept runs, at their final values. ``apart``: --by keys
    that, like the task, tell apart groups never ranked against each other (a suite's settings).
    """
    if not by:
        raise ValueError("--by needs at least one key, e.g. --by mixer")
    unreadable = tuple(run for run in runs if run.problem is not None)
    runs = [run for run in runs if run.problem is None]
    if not runs:
        listed = "; ".join(f"{run.dir / RESULTS_FILE} {run.problem}" for run in unreadable[:5])
        raise ValueError(f"none of the {len(unreadable)} {RESULTS_FILE} can be used: {listed}")
    for key in by:
        check_key(runs, key, "--by")
    for key in best_over:
        check_key(runs, key, "--best-over")
    mode = mode or metric_mode(metric)
    if mode is None:
        raise ValueError(
            f"cannot tell whether {metric} should be minimised or maximised: pass --mode"
        )
    finished = [run for run in runs if run.status == "finished"]
    _check_metric(finished, metric)
    by, task_note = _apart_by_task(by, finished)
    buckets: dict[tuple[str, ...], list[Run]] = {}
    for run in finished:
        buckets.setdefault(tuple(value_label(lookup(run.results, k)) for k in by), []).append(run)
    also = expand_also(finished, also)
    groups = [
        summarize_group(label, members, metric, mode, best_over, also)
        for label, members in buckets.items()
    ]
    warnings = [task_note] if task_note else []
    for group in groups:
        name = label_name(by, group.label)
        if warning := _mixed_warning(name, group.runs, {"seed", *best_over, *by}):
            warnings.append(warning)
    task_at = [index for index, key in enumerate(by) if key in TASK_KEYS or key in apart]

    def task_of(group: Group) -> tuple[str, ...]:
        return tuple(group.label[index] for index in task_at)

    groups.sort(key=lambda g: (task_of(g), rank_key(g.metric.mean, mode), g.label))
    by_task: dict[tuple[str, ...], list[Group]] = {}
    for group in groups:
        by_task.setdefault(task_of(group), []).append(group)
    marks = {label: m for task in by_task.values() for label, m in mark_groups(task, mode).items()}
    runs_by_group = {label_name(by, group.label): group.runs for group in groups}
    curves, curve_warnings = group_bands(runs_by_group, metric, band)
    return Comparison(
        by=tuple(by),
        metric=metric,
        mode=mode,
        best_over=tuple(best_over),
        band=band,
        groups=tuple(groups),
        marks=MappingProxyType(marks),
        unfinished=tuple(run for run in runs if run.status != "finished"),
        unreadable=unreadable,
        also=tuple(also),
        warnings=(*warnings, *curve_warnings),
        curves=MappingProxyType({m: MappingProxyType(b) for m, b in curves.items()}),
        scope=_scope(runs, groups, by),
        ledger=runs_spent(runs),
    )
