"""The cells every renderer shows: titles, the main table, lr selection notes and the runs that
did not finish, formatted once for the terminal, markdown and HTML alike."""

from __future__ import annotations

import math
from typing import Any

from experiments.compare.aggregate import Comparison, Group, Stats
from experiments.compare.runs import lookup, value_label


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
    lr = value_label(group.lr)
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
            f"{value_label(lr)}: {stats.mean:.4g} (n={stats.n})"
            for lr, stats in group.lr_grid.items()
        )
        notes.append(
            f"{comparison.group_name(group)}: picked {comparison.lr_key}={value_label(group.lr)} "
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
            *(value_label(lookup(run.results, k)) for k in comparison.by),
            value_label(run.results.get("seed")),
            _short_error(run.results.get("error")),
        ]
        for run in comparison.unfinished
    ]
    return header, rows
