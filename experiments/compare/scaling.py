"""Scaling axes: the selection metric against a numeric config key (``model.d_model``) or a run
property (``params``, ``flops_per_token``, ``state_size``, ``tokens_per_s``, ``wall_s``), as
Zoology plots recall against width and state size and Mamba against parameters.

A *point* is one config: the finished runs that agree on every config key but the seed and the
--best-over keys (and their interpolated copies), with its best grid point of those keys kept as
in the tables (``--best-over`` applies per point) and its seeds summarised. A *line* joins the
points that share the --by values other than the --x keys. Points of one line at the same x
differ in a key no --by names; a warning says which, since the line would zigzag through them.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from mixerlab.experiments.compare.aggregate import summarize, summarize_group
from mixerlab.experiments.compare.comparison import (
    PROPERTIES,
    Comparison,
    Line,
    Point,
    Scaling,
    Stats,
    label_name,
)
from mixerlab.experiments.compare.config_diff import differing_keys
from mixerlab.experiments.compare.runs import Run, lookup, value_label
from mixerlab.experiments.run.config_values import flatten

DEFAULT_X = "params"  # the axis drawn when --x is not given


def _number(value: Any) -> float | None:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if numeric and math.isfinite(value) else None


def x_value(run: Run, key: str) -> float | None:
    """The run's value of ``key`` as a number: a results.json property or a config key. The
    key a ``model.budget`` solved for (``model.d_model``) reads the value the budget chose,
    since the recorded config keeps the value the user gave."""
    if key in PROPERTIES:
        return _number(run.results.get(key))
    budget = run.results.get("budget")
    if isinstance(budget, dict) and key == f"model.{budget.get('solved_for')}":
        return _number(budget.get("value"))
    return _number(lookup(run.results, key))


def numeric_keys(runs: Sequence[Run]) -> list[str]:
    """The keys --x accepts for ``runs``: properties and config leaves some run has a number for."""
    keys = {key for key in PROPERTIES for run in runs if x_value(run, key) is not None}
    for run in runs:
        config = flatten(run.results.get("config") or {})
        keys.update(key for key, value in config if _number(value) is not None)
    return sorted(keys - {"seed"})


def check_x(runs: Sequence[Run], keys: Sequence[str]) -> None:
    """Refuse an x key none of ``runs`` has a number for, naming the keys they do have."""
    readable = [run for run in runs if run.problem is None]
    for key in keys:
        if key == "seed" or key.endswith(".seed"):
            raise ValueError(f"--x {key}: seeds are what each point is averaged over, not an axis")
        if any(x_value(run, key) is not None for run in readable):
            continue
        have = numeric_keys(readable)
        values = sorted({value_label(lookup(run.results, key)) for run in readable} - {"-"})
        if values:
            reason = f"not a number in the runs (values: {', '.join(values[:5])})"
        else:
            reason = f"no run's {'results.json' if key in PROPERTIES else 'config'} has it"
        close = [k for k in have if k.endswith(f".{key}")]
        close += difflib.get_close_matches(key, have, n=3, cutoff=0.8)
        hint = f"Did you mean {' or '.join(dict.fromkeys(close))}? " if close else ""
        raise ValueError(
            f"--x {key}: {reason}. {hint}Numeric keys the runs have: {', '.join(have) or 'none'}"
        )


def set_metrics(finished: Sequence[Run], metric: str) -> list[str]:
    """The per-set versions of ``metric`` (``val/acc@seq_len=64,kv=4``) the runs record best
    values of, in logging order; none unless there are several (one set is the metric itself)."""
    if "@" in metric:
        return []
    names = (name for run in finished for name in run.results.get("best") or {})
    sets = [name for name in dict.fromkeys(names) if fnmatch.fnmatchcase(name, f"{metric}@*")]
    return sets if len(sets) > 1 else []


def _point_keys(
    finished: Sequence[Run], by: Sequence[str], best_over: Sequence[str], x: str
) -> list[str]:
    """The config keys that tell points apart: every key that differs between the runs but the
    seed and the --best-over keys and their copies (``task.datamodule.seed``,
    ``optim.optimizer.lr``), less a --best-over key that is the axis itself."""

    def column(key: str) -> tuple[str, ...]:
        return tuple(value_label(lookup(run.results, key)) for run in finished)

    axis = column(x) if x not in PROPERTIES else None
    averaged = {column("seed")} | {c for key in best_over if (c := column(key)) != axis}
    keys = [key for key in differing_keys(finished, set()) if column(key) not in averaged]
    return [*by, *(key for key in keys if key not in by)]


def _point(
    members: Sequence[Run], comparison: Comparison, key: str, panels: Sequence[str]
) -> Point | None:
    """The config of ``members`` at its best grid point; None when no run has an x value."""
    metric = comparison.metric
    group = summarize_group((), members, metric, comparison.mode, comparison.best_over, ())
    xs = [x for run in group.runs if (x := x_value(run, key)) is not None]
    if not xs:
        return None
    y: dict[str, Stats | None] = {metric: group.metric}
    for name in panels[1:]:
        values = [run.best(name) for run in group.runs if name in (run.results.get("best") or {})]
        y[name] = summarize(values) if values else None
    return Point(summarize(xs), group, MappingProxyType(y))


def _label_order(label: tuple[str, ...]) -> tuple[tuple[bool, float, str], ...]:
    """Lines in order of their values, numbers by size (64 before 128)."""

    def order(text: str) -> tuple[bool, float, str]:
        try:
            return False, float(text), text
        except ValueError:
            return True, 0.0, text

    return tuple(map(order, label))


def _repeated_x(key: str, line: Line, point_keys: Sequence[str]) -> list[str]:
    """Warnings for points of ``line`` at one x: they differ in a key --by does not name."""
    at: dict[float, list[Point]] = {}
    for point in line.points:
        at.setdefault(point.x.mean, []).append(point)
    warnings = []
    for x, points in at.items():
        if len(points) < 2:
            continue
        firsts = [point.group.runs[0] for point in points]
        differ = [
            k for k in point_keys if len({value_label(lookup(r.results, k)) for r in firsts}) > 1
        ]
        warnings.append(
            f"--x {key}: line {line.name} has {len(points)} points at {key}={x:g} that differ in "
            f"{', '.join(differ)}; add {differ[0]} to --by to draw one line each"
        )
    return warnings


def _scaling(
    comparison: Comparison, finished: Sequence[Run], key: str, line_by: Sequence[str]
) -> tuple[Scaling, list[str]]:
    panels = (comparison.metric, *set_metrics(finished, comparison.metric))
    point_keys = _point_keys(finished, comparison.by, comparison.best_over, key)
    buckets: dict[tuple[str, ...], list[Run]] = {}
    for run in finished:
        buckets.setdefault(
            tuple(value_label(lookup(run.results, k)) for k in point_keys), []
        ).append(run)
    by_line: dict[tuple[str, ...], list[Point]] = {}
    lacking = []
    for members in buckets.values():
        if (point := _point(members, comparison, key, panels)) is None:
            lacking.append(members[0].name)
            continue
        label = tuple(value_label(lookup(members[0].results, k)) for k in line_by)
        by_line.setdefault(label, []).append(point)
    lines = tuple(
        Line(
            label_name(line_by, label) if line_by else "all runs",
            tuple(sorted(points, key=lambda p: p.x.mean)),
        )
        for label, points in sorted(by_line.items(), key=lambda item: _label_order(item[0]))
    )
    warnings = [w for line in lines for w in _repeated_x(key, line, point_keys)]
    if lacking:
        listed = ", ".join(lacking[:3]) + (" ..." if len(lacking) > 3 else "")
        warnings.append(f"--x {key}: left off {len(lacking)} config(s) without {key}: {listed}")
    return Scaling(key, panels, lines), warnings


def add_scaling(comparison: Comparison, runs: Sequence[Run], keys: Sequence[str]) -> Comparison:
    """``comparison`` with the metric against each of ``keys`` (``params`` when none is given)
    over the finished ``runs``, and the warnings the lines give. Lines are the --by groups less
    every x key: a config key given as --x groups the tables, not the other axes' lines."""
    finished = [run for run in runs if run.problem is None and run.status == "finished"]
    keys = keys or [DEFAULT_X]
    line_by = [k for k in comparison.by if k not in keys]
    scalings, warnings = [], []
    for key in keys:
        scaling, said = _scaling(comparison, finished, key, line_by)
        scalings.append(scaling)
        warnings += said
    return replace(comparison, scaling=tuple(scalings), warnings=(*comparison.warnings, *warnings))
