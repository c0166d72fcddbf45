"""Compare finished runs: tables, curves and a report, aggregated over seeds.

    mixerlab compare PATH... [--by KEYS] [--metric NAME] [--also METRICS] [--out DIR]

Reads every ``results.json`` below the given paths (the contract the train app writes at the end
of a run and on failure), groups finished runs by mixer or by any config keys and aggregates over
seeds. When a group holds a learning-rate grid it keeps the best learning rate on the selection
metric, as Zoology reports MQAR: RNN and conv mixers are learning-rate sensitive, so one shared lr
would compare tuning rather than mixers. The pick is printed and written with every table. Failed
and unfinished runs are listed apart, with their error, so a crashed seed never silently shrinks a
mean. ``--also`` adds columns for further metrics (``val/acc@*`` for every validation set of a
task), taken at the end of training from the same runs.

Outputs in ``--out`` (default ``<first PATH>/comparison``): a table in the terminal,
``comparison.csv``, ``comparison.md``, PNG plots (metric vs step, vs wall-clock time, vs parameter
count, throughput) and a self-contained ``report.html``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import difflib
import fnmatch
import html
import io
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from lightning_modules.io import write_atomic
from lightning_modules.metric_names import metric_mode

RESULTS = "results.json"
RESULT_KEYS = ("mixer", "task")  # results.json fields usable with --by; the rest is config
PLOTS = {
    "curve_step.png": "validation metric vs step",
    "curve_wall.png": "validation metric vs wall-clock time",
    "metric_vs_params.png": "metric vs parameter count",
    "throughput.png": "training throughput",
}


@dataclass(frozen=True)
class Run:
    """One run directory and the results.json it wrote."""

    dir: Path
    results: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.results.get("status", "unknown"))

    @property
    def name(self) -> str:
        """The run directory, relative to the working directory when below it."""
        try:
            return str(self.dir.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(self.dir)

    def best(self, metric: str) -> float:
        value = (self.results.get("best") or {}).get(metric)
        return math.nan if value is None else float(value)

    def final(self, metric: str) -> float | None:
        """The metric's last logged value (results' ``metrics``), None when never logged."""
        value = (self.results.get("metrics") or {}).get(metric)
        return None if value is None else float(value)


@dataclass(frozen=True)
class Stats:
    """Mean, sample std (ddof=1; None for one value), count and range of one quantity."""

    mean: float
    std: float | None
    n: int
    min: float
    max: float


@dataclass
class Group:
    """Finished runs sharing the --by values; ``runs`` are those at the kept learning rate."""

    label: tuple[str, ...]
    runs: list[Run]
    metric: Stats
    lr: Any
    lr_grid: dict[Any, Stats]
    params: Stats | None
    flops_per_token: Stats | None
    tokens_per_s: Stats | None
    wall_s: Stats | None
    also: dict[str, Stats | None] = field(default_factory=dict)

    @property
    def lr_picked(self) -> bool:
        return len(self.lr_grid) > 1

    @property
    def seeds(self) -> list[Any]:
        return [run.results.get("seed") for run in self.runs]


@dataclass
class Curve:
    """A run's validation metric over training (from its metrics.csv), sorted by step."""

    step: np.ndarray
    wall_s: np.ndarray
    value: np.ndarray


@dataclass
class Band:
    """A group's curve: the seeds' mean and spread at each shared step, and the time to reach it."""

    step: np.ndarray
    wall_s: np.ndarray
    center: np.ndarray
    low: np.ndarray
    high: np.ndarray


@dataclass
class Comparison:
    """Everything the renderers need: groups best first, runs listed apart, warnings."""

    by: list[str]
    metric: str
    mode: str
    lr_key: str
    groups: list[Group]
    unfinished: list[Run]
    also: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    curves: dict[Path, Curve] = field(default_factory=dict)

    def group_name(self, group: Group) -> str:
        """Legend label: the value alone for one key, ``key=value`` pairs for several."""
        if len(self.by) == 1:
            return group.label[0]
        return ", ".join(
            f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(self.by, group.label, strict=True)
        )


# ---------------------------------------------------------------- loading and lookup


def load_runs(paths: Sequence[Path]) -> list[Run]:
    """Every results.json below ``paths`` (folders are searched recursively)."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ValueError(f"no such path: {', '.join(missing)}")
    files: dict[Path, Path] = {}
    for path in paths:
        if path.is_file() and path.name != RESULTS:
            raise ValueError(f"{path} is not a {RESULTS}: pass run folders or their {RESULTS}")
        for found in [path] if path.is_file() else sorted(path.rglob(RESULTS)):
            files.setdefault(found.resolve(), found)
    if not files:
        raise ValueError(
            f"no {RESULTS} found below {', '.join(map(str, paths))}. Every run writes one when it "
            "finishes or fails: make runs with `mixerlab train mixer=attention` or a sweep like "
            "`mixerlab train -m mixer=attention,gmlp seed=0,1`, then pass their output folder "
            "(runs/, or runs/multirun/ for sweeps)"
        )
    runs = []
    for file in files.values():
        try:
            data = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read {file}: {err}; delete it or fix it") from err
        if not isinstance(data, dict):
            raise ValueError(f"{file} holds {type(data).__name__}, not the results object")
        runs.append(Run(file.parent, data))
    return runs


def lookup(results: dict[str, Any], key: str) -> Any:
    """``mixer`` or ``task`` from results.json, else a dotted path into its config."""
    if key in RESULT_KEYS and key in results:
        return results[key]
    node: Any = results.get("config") or {}
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _flatten(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _flatten(value, f"{prefix}{key}.")
    elif prefix:
        yield prefix[:-1], node


def available_keys(runs: Sequence[Run]) -> list[str]:
    """Keys usable with --by: mixer, task and every config leaf, seed excluded."""
    keys = set(RESULT_KEYS)
    for run in runs:
        keys.update(k for k, _ in _flatten(run.results.get("config") or {}))
    return sorted(keys - {"seed"})


def _label(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _check_key(runs: Sequence[Run], key: str, flag: str) -> None:
    if key == "seed" or key.endswith(".seed"):
        raise ValueError(f"{flag} {key}: seeds are what each group is averaged over, not a key")
    if any(lookup(run.results, key) is not None for run in runs):
        return
    keys = available_keys(runs)
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.8)
    hint = f"Did you mean {' or '.join(close)}? " if close else ""
    raise ValueError(
        f"unknown {flag} key {key!r}: no run has it. {hint}Available keys: {', '.join(keys)}"
    )


def infer_mode(metric: str) -> str:
    """``min`` for losses (loss, ppl, bpb), ``max`` for accuracies, from the metric's name."""
    mode = metric_mode(metric)
    if mode is None:
        raise ValueError(
            f"cannot tell whether {metric} should be minimised or maximised: pass --mode"
        )
    return mode


# ---------------------------------------------------------------- grouping and aggregation


def summarize(values: Sequence[float]) -> Stats:
    """Stats over seeds; NaN (a diverged run) propagates into the mean so it cannot win."""
    array = np.asarray(values, dtype=float)
    std = float(np.std(array, ddof=1)) if len(array) > 1 else None
    return Stats(float(array.mean()), std, len(array), float(array.min()), float(array.max()))


def _field_stats(runs: Sequence[Run], name: str) -> Stats | None:
    values = [float(v) for run in runs if (v := run.results.get(name)) is not None]
    return summarize(values) if values else None


def _rank(mean: float, mode: str) -> float:
    """Sort key, smaller is better; NaN ranks last."""
    if math.isnan(mean):
        return math.inf
    return mean if mode == "min" else -mean


def _lr_order(value: Any) -> tuple[bool, float, str]:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return value is None, float(value) if numeric else math.inf, str(value)


def select_lr(runs: Sequence[Run], metric: str, mode: str, lr_key: str) -> tuple[Any, dict]:
    """The learning rate with the best mean metric over seeds, and the metric at every lr."""
    by_lr: dict[Any, list[Run]] = {}
    for run in runs:
        by_lr.setdefault(lookup(run.results, lr_key), []).append(run)
    grid = {
        lr: summarize([run.best(metric) for run in by_lr[lr]])
        for lr in sorted(by_lr, key=_lr_order)
    }
    best = min(grid, key=lambda lr: _rank(grid[lr].mean, mode))
    return best, grid


def _differing_keys(runs: Sequence[Run], ignore: set[str]) -> list[str]:
    configs = [dict(_flatten(run.results.get("config") or {})) for run in runs]
    keys = sorted(set().union(*configs) - ignore)
    return [k for k in keys if len({_label(c.get(k)) for c in configs}) > 1]


def _mixed_warning(name: str, runs: Sequence[Run], ignore: set[str]) -> str | None:
    """Say when a group's runs are not seed replicates of one config (a --by key is missing)."""
    seeds = [run.results.get("seed") for run in runs]
    params = {run.results.get("params") for run in runs}
    repeated = sorted({_label(s) for s in seeds if seeds.count(s) > 1})
    if not repeated and len(params) <= 1:
        return None
    reason = f"seed {', '.join(repeated)} repeated" if repeated else "parameter counts differ"
    differ = _differing_keys(runs, ignore)
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


def build_comparison(
    runs: Sequence[Run],
    by: Sequence[str],
    metric: str,
    mode: str | None,
    lr_key: str,
    also: Sequence[str] = (),
) -> Comparison:
    """Group finished runs by ``by``, keep the best lr per group, aggregate over seeds.

    ``also``: further metrics (globs allowed) to aggregate over the kept runs, at their final
    values.
    """
    if not by:
        raise ValueError("--by needs at least one key, e.g. --by mixer")
    for key in by:
        _check_key(runs, key, "--by")
    _check_key(runs, lr_key, "--lr-key")
    mode = mode or infer_mode(metric)
    finished = [run for run in runs if run.status == "finished"]
    lacking = [run.name for run in finished if metric not in (run.results.get("best") or {})]
    if lacking:
        have = sorted(set().union(*[(run.results.get("best") or {}) for run in finished]))
        raise ValueError(
            f"metric {metric} is missing from 'best' in {len(lacking)} of {len(finished)} finished "
            f"runs: {', '.join(lacking[:10])}{' ...' if len(lacking) > 10 else ''}. "
            f"Metrics the runs have: {', '.join(have) or 'none'}; pick one with --metric, or pass "
            "only the runs that log it"
        )
    buckets: dict[tuple[str, ...], list[Run]] = {}
    for run in finished:
        buckets.setdefault(tuple(_label(lookup(run.results, k)) for k in by), []).append(run)
    unfinished = [run for run in runs if run.status != "finished"]
    also = expand_also(finished, also)
    comparison = Comparison(list(by), metric, mode, lr_key, [], unfinished, also)
    for label, members in buckets.items():
        lr, grid = select_lr(members, metric, mode, lr_key)
        kept = [run for run in members if lookup(run.results, lr_key) == lr]
        numbers = ("params", "flops_per_token", "tokens_per_s", "wall_s")
        stats = {name: _field_stats(kept, name) for name in numbers}
        group = Group(label=label, runs=kept, metric=grid[lr], lr=lr, lr_grid=grid, **stats)
        for name in also:
            values = [v for run in kept if (v := run.final(name)) is not None]
            group.also[name] = summarize(values) if values else None
        comparison.groups.append(group)
        name = comparison.group_name(group)
        if (warning := _mixed_warning(name, kept, {"seed", lr_key, *by})) is not None:
            comparison.warnings.append(warning)
    comparison.groups.sort(key=lambda g: (_rank(g.metric.mean, mode), g.label))
    return comparison


# ---------------------------------------------------------------- curves from metrics.csv


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def read_curve(run: Run, metric: str) -> Curve:
    """The rows of the run's metrics.csv that logged ``metric``, sorted by step."""
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
        for row in reader:
            step, wall, value = (_float(row.get(k)) for k in ("step", "wall_s", metric))
            if step is not None and value is not None:
                rows.append((step, math.nan if wall is None else wall, value))
    if not rows:
        raise ValueError(f"{history} logged no {metric} value")
    rows.sort(key=lambda r: r[0])
    step, wall, value = (np.array(column, dtype=float) for column in zip(*rows, strict=True))
    return Curve(step, wall, value)


def load_curves(comparison: Comparison) -> None:
    """Read the histories of the runs in the table; runs without one are named in a warning."""
    problems = []
    for group in comparison.groups:
        for run in group.runs:
            try:
                comparison.curves[run.dir] = read_curve(run, comparison.metric)
            except (OSError, ValueError) as err:
                problems.append(f"{run.name} ({err})")
    if problems:
        comparison.warnings.append(
            f"no {comparison.metric} curve for {len(problems)} run(s), left out of the curve "
            f"plots: {'; '.join(problems)}"
        )


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
        return Band(grid, wall, center, center - spread, center + spread)
    return Band(grid, wall, center, ys.min(axis=0), ys.max(axis=0))


# ---------------------------------------------------------------- plots


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return buffer.getvalue()


def _colors(comparison: Comparison) -> dict[tuple[str, ...], str]:
    """One color per group, the same in every plot."""
    palette = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    return {g.label: palette[i % len(palette)] for i, g in enumerate(comparison.groups)}


def plot_curves(comparison: Comparison, x: str, band: str) -> tuple[bytes, list[str]]:
    """Metric vs ``step`` or ``wall_s``, one line per group with its seed band."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    colors = _colors(comparison)
    skipped = []
    for group in comparison.groups:
        curves = [comparison.curves[r.dir] for r in group.runs if r.dir in comparison.curves]
        name = comparison.group_name(group)
        result = seed_band(curves, band) if curves else None
        if result is None:
            skipped.append(name)
            continue
        grid, center, low, high = getattr(result, x), result.center, result.low, result.high
        color = colors[group.label]
        ax.plot(
            grid, center, color=color, marker="o", markersize=2.5, label=f"{name} (n={len(curves)})"
        )
        if len(curves) > 1:
            ax.fill_between(grid, low, high, color=color, alpha=0.2, linewidth=0)
    spread = "min-max" if band == "minmax" else "±1 std"
    ax.set_xlabel("step" if x == "step" else "wall-clock time (s), mean over seeds")
    ax.set_ylabel(comparison.metric)
    ax.set_title(f"{comparison.metric}: mean over seeds, band {spread}")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    return _png(fig), skipped


def plot_metric_vs_params(comparison: Comparison) -> bytes:
    """Scatter of the metric against parameter count, each point labelled with its group."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    colors = _colors(comparison)
    points = [(g, g.params.mean) for g in comparison.groups if g.params is not None]
    for group, params in points:
        y = group.metric.mean
        yerr = group.metric.std or 0.0
        ax.errorbar(params, y, yerr=yerr, fmt="o", color=colors[group.label], capsize=3)
        ax.annotate(
            comparison.group_name(group),
            (params, y),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    sizes = [params for _, params in points if params > 0]
    if sizes and max(sizes) > 10 * min(sizes):
        ax.set_xscale("log")
    ax.margins(x=0.15, y=0.1)  # room for the labels
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"best {comparison.metric} (mean ± std)")
    ax.set_title(f"{comparison.metric} vs parameter count")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_throughput(comparison: Comparison) -> bytes:
    """Horizontal bars of training tokens/s per group (mean ± std over seeds)."""
    bars = [(g, g.tokens_per_s) for g in comparison.groups if g.tokens_per_s is not None]
    fig = Figure(figsize=(7, 1.5 + 0.4 * max(len(bars), 1)), layout="constrained")
    ax = fig.subplots()
    colors = _colors(comparison)
    for row, (group, tps) in enumerate(bars):
        ax.barh(row, tps.mean, xerr=tps.std or 0.0, color=colors[group.label], capsize=3)
    ax.set_yticks(range(len(bars)), [comparison.group_name(g) for g, _ in bars])
    ax.invert_yaxis()
    ax.set_xlabel("training tokens/s")
    ax.set_title("throughput (mean ± std over seeds)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def render_plots(comparison: Comparison, band: str) -> dict[str, bytes]:
    """All PNGs by file name; groups without a usable curve are named in a warning."""
    step_png, skipped = plot_curves(comparison, "step", band)
    wall_png, _ = plot_curves(comparison, "wall_s", band)
    if skipped:
        comparison.warnings.append(f"no curve drawn for: {', '.join(skipped)}")
    return {
        "curve_step.png": step_png,
        "curve_wall.png": wall_png,
        "metric_vs_params.png": plot_metric_vs_params(comparison),
        "throughput.png": plot_throughput(comparison),
    }


# ---------------------------------------------------------------- tables


def _human(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _mean_std(stats: Stats | None, mean_fmt: str, std_fmt: str) -> str:
    if stats is None:
        return "-"
    text = format(stats.mean, mean_fmt)
    return text if stats.std is None else f"{text} ± {stats.std:{std_fmt}}"


def _lr_cell(group: Group) -> str:
    lr = _label(group.lr)
    return f"{lr} (best of {len(group.lr_grid)})" if group.lr_picked else lr


def title(comparison: Comparison) -> str:
    better = "lower" if comparison.mode == "min" else "higher"
    return f"best {comparison.metric} ({better} is better) by {', '.join(comparison.by)}"


def caption(comparison: Comparison) -> str:
    """How the numbers were made, under every table."""
    text = "mean ± sample std over seeds; n = seeds."
    if comparison.also:
        text += f" {', '.join(comparison.also)}: at the end of training, same runs."
    if any(g.lr_picked for g in comparison.groups):
        text += (
            f" Where a group swept {comparison.lr_key}, only the {comparison.lr_key} with the best"
            f" mean {comparison.metric} is kept (as Zoology reports MQAR); see the lr selection."
        )
    return text


def table_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the main table, shared by terminal, markdown and HTML."""
    header = [
        *comparison.by,
        comparison.lr_key,
        "n",
        comparison.metric,
        *(name if name != comparison.metric else f"{name} (final)" for name in comparison.also),
        "params",
        "FLOPs/token",
        "tokens/s",
        "wall (s)",
    ]
    rows = [
        [
            *g.label,
            _lr_cell(g),
            str(g.metric.n),
            _mean_std(g.metric, ".4g", ".2g"),
            *(_mean_std(g.also[name], ".4g", ".2g") for name in comparison.also),
            _human(g.params.mean if g.params else None),
            _human(g.flops_per_token.mean if g.flops_per_token else None),
            _mean_std(g.tokens_per_s, ",.0f", ",.0f"),
            _mean_std(g.wall_s, ",.0f", ",.0f"),
        ]
        for g in comparison.groups
    ]
    return header, rows


def lr_notes(comparison: Comparison) -> list[str]:
    """One line per group that swept the learning rate: what was kept, out of what."""
    notes = []
    for group in comparison.groups:
        if not group.lr_picked:
            continue
        grid = ", ".join(
            f"{_label(lr)}: {stats.mean:.4g} (n={stats.n})" for lr, stats in group.lr_grid.items()
        )
        notes.append(
            f"{comparison.group_name(group)}: picked {comparison.lr_key}={_label(group.lr)} "
            f"by mean {comparison.metric} ({'min' if comparison.mode == 'min' else 'max'}) "
            f"from {grid}"
        )
    return notes


def _short_error(error: Any, limit: int = 160) -> str:
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    text = lines[-1] if lines else "-"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unfinished_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Failed/interrupted runs: where, which group, which seed, and the error's last line."""
    header = ["run", "status", *comparison.by, "seed", "error"]
    rows = [
        [
            run.name,
            run.status,
            *(_label(lookup(run.results, k)) for k in comparison.by),
            _label(run.results.get("seed")),
            _short_error(run.results.get("error")),
        ]
        for run in comparison.unfinished
    ]
    return header, rows


def print_report(comparison: Comparison, console: Console) -> None:
    """The rich tables and notes in the terminal."""
    header, rows = table_rows(comparison)
    table = Table(title=title(comparison), caption=caption(comparison), caption_justify="left")
    for index, name in enumerate(header):
        if name in comparison.by:  # group names are never cut, the number columns wrap instead
            width = max([len(name), *(len(row[index]) for row in rows)])
            table.add_column(name, no_wrap=True, min_width=width)
        else:
            table.add_column(name, justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for note in lr_notes(comparison):
        console.print(f"[bold]lr selection[/] {note}", highlight=False)
    if comparison.unfinished:
        header, rows = unfinished_rows(comparison)
        failed = Table(title="failed and unfinished runs (not in the table above)")
        for name in header:
            failed.add_column(name, style="red" if name == "status" else None)
        for row in rows:
            failed.add_row(*row)
        console.print(failed)
    for warning in comparison.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)


def render_csv(comparison: Comparison) -> str:
    """One row per group with raw numbers (full precision), for scripts."""
    metric = comparison.metric

    def num(value: float | None) -> str:
        if value is None:
            return ""
        return str(int(value)) if float(value).is_integer() else repr(float(value))

    columns = [
        *comparison.by,
        "lr",
        "lr_picked",
        "lr_grid",
        "n",
        "seeds",
        f"{metric}_mean",
        f"{metric}_std",
        f"{metric}_min",
        f"{metric}_max",
        *(f"{name}_final_{stat}" for name in comparison.also for stat in ("mean", "std")),
        "params",
        "flops_per_token",
        "tokens_per_s_mean",
        "tokens_per_s_std",
        "wall_s_mean",
        "wall_s_std",
        "runs",
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for g in comparison.groups:
        writer.writerow(
            [
                *g.label,
                "" if g.lr is None else g.lr,
                str(g.lr_picked).lower(),
                ";".join(f"{_label(lr)}:{num(s.mean)}:n={s.n}" for lr, s in g.lr_grid.items()),
                g.metric.n,
                ";".join(_label(s) for s in g.seeds),
                num(g.metric.mean),
                num(g.metric.std),
                num(g.metric.min),
                num(g.metric.max),
                *(
                    num(getattr(g.also[name], stat) if g.also[name] else None)
                    for name in comparison.also
                    for stat in ("mean", "std")
                ),
                num(g.params.mean if g.params else None),
                num(g.flops_per_token.mean if g.flops_per_token else None),
                num(g.tokens_per_s.mean if g.tokens_per_s else None),
                num(g.tokens_per_s.std if g.tokens_per_s else None),
                num(g.wall_s.mean if g.wall_s else None),
                num(g.wall_s.std if g.wall_s else None),
                ";".join(run.name for run in g.runs),
            ]
        )
    return buffer.getvalue()


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def cells(values: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    return "\n".join([cells(header), "|" + "---|" * len(header), *map(cells, rows)])


def render_markdown(comparison: Comparison, plots: Sequence[str]) -> str:
    """comparison.md: the table, lr selection, runs left out, warnings, links to the plots."""
    parts = [
        f"# {title(comparison)}",
        "",
        _md_table(*table_rows(comparison)),
        "",
        caption(comparison),
    ]
    if notes := lr_notes(comparison):
        parts += ["", "## Learning-rate selection", "", *(f"- {note}" for note in notes)]
    if comparison.unfinished:
        parts += ["", "## Failed and unfinished runs (not in the table)", ""]
        parts.append(_md_table(*unfinished_rows(comparison)))
    if comparison.warnings:
        parts += ["", "## Warnings", "", *(f"- {w}" for w in comparison.warnings)]
    parts += ["", "## Plots", "", *(f"![{PLOTS[name]}]({name})" for name in plots)]
    return "\n".join(parts) + "\n"


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(comparison: Comparison, plots: dict[str, bytes]) -> str:
    """report.html, self-contained: tables, notes, full error texts and base64-embedded plots."""
    esc = html.escape
    parts = [
        f"<h1>{esc(title(comparison))}</h1>",
        _html_table(*table_rows(comparison)),
        f"<p class='caption'>{esc(caption(comparison))}</p>",
    ]
    if notes := lr_notes(comparison):
        items = "".join(f"<li>{esc(n)}</li>" for n in notes)
        parts.append(f"<h2>Learning-rate selection</h2><ul>{items}</ul>")
    if comparison.unfinished:
        parts.append("<h2>Failed and unfinished runs (not in the table)</h2>")
        parts.append(_html_table(*unfinished_rows(comparison)))
        for run in comparison.unfinished:
            if run.results.get("error"):
                parts.append(
                    f"<details><summary>{esc(run.name)}: full error</summary>"
                    f"<pre>{esc(str(run.results['error']))}</pre></details>"
                )
    if comparison.warnings:
        items = "".join(f"<li>{esc(w)}</li>" for w in comparison.warnings)
        parts.append(f"<h2>Warnings</h2><ul>{items}</ul>")
    parts.append("<h2>Plots</h2>")
    for name, png in plots.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<figure><img alt='{esc(PLOTS[name])}' src='data:image/png;base64,{data}'>")
        parts.append(f"<figcaption>{esc(PLOTS[name])}</figcaption></figure>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}th{background:#f3f3f3}.caption{color:#555}img{max-width:100%}"
        "pre{white-space:pre-wrap;background:#f7f7f7;padding:8px}"
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>mixerlab compare: {esc(title(comparison))}</title><style>{style}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )


# ---------------------------------------------------------------- output files and CLI


def write_outputs(comparison: Comparison, out: Path, band: str = "minmax") -> list[Path]:
    """Write csv, md, PNGs and report.html into ``out``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    plots = render_plots(comparison, band)
    files: dict[str, bytes | str] = {
        "comparison.csv": render_csv(comparison),
        "comparison.md": render_markdown(comparison, list(plots)),
        **plots,
        "report.html": render_html(comparison, plots),
    }
    for name, data in files.items():
        write_atomic(out / name, data)
    return [out / name for name in files]


def _default_out(path: Path) -> Path:
    return (path.parent if path.is_file() else path) / "comparison"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixerlab compare",
        description=__doc__.split("\n")[0],
        epilog="example: mixerlab compare runs/multirun/ --by mixer.name,model.d_model "
        "--metric val/acc",
    )
    parser.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="run folders (searched recursively)"
    )
    parser.add_argument(
        "--by",
        default="mixer",
        metavar="KEYS",
        help="comma-separated grouping keys: results fields (mixer, task) or dotted config paths "
        "(model.d_model); seeds are always averaged over (default: mixer)",
    )
    parser.add_argument(
        "--metric", default="val/loss", metavar="NAME", help="selection metric, from results' best"
    )
    parser.add_argument(
        "--also",
        default="",
        metavar="METRICS",
        help="comma-separated further metrics to tabulate, final values of the same runs; globs "
        "allowed: 'val/acc@*' gives one column per validation set",
    )
    parser.add_argument(
        "--mode",
        choices=("min", "max"),
        help="minimise or maximise --metric (default: from its name)",
    )
    parser.add_argument(
        "--lr-key",
        default="optim.lr",
        metavar="KEY",
        help="config key of the learning rate; with several values in a group the best is kept "
        "(add it to --by to see every lr as its own row)",
    )
    parser.add_argument(
        "--band", choices=("minmax", "std"), default="minmax", help="seed band on the curve plots"
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="output folder (default: <first PATH>/comparison)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    try:
        runs = load_runs(args.paths)
        by = [key.strip() for key in args.by.split(",") if key.strip()]
        also = [name.strip() for name in args.also.split(",") if name.strip()]
        comparison = build_comparison(runs, by, args.metric, args.mode, args.lr_key, also)
    except ValueError as err:
        print(f"mixerlab compare: error: {err}", file=sys.stderr)
        return 2
    if not comparison.groups:
        print_report(comparison, console)
        print(
            f"mixerlab compare: error: none of the {len(runs)} runs finished (listed above)",
            file=sys.stderr,
        )
        return 1
    load_curves(comparison)
    out = args.out or _default_out(args.paths[0])
    written = write_outputs(comparison, out, args.band)
    print_report(comparison, console)
    console.print(f"written to {out}: {', '.join(p.name for p in written)}", highlight=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
