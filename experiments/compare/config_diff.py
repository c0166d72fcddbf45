"""Which config keys differ between runs: what a group's warning names, what tells the points
of a scaling plot apart, and what the report's header lists."""

from __future__ import annotations

from collections.abc import Sequence

from mixerlab.experiments.compare.runs import Run, value_label
from mixerlab.experiments.run.config_values import flatten


def differing_keys(runs: Sequence[Run], ignore: set[str]) -> list[str]:
    """Config keys whose values differ between ``runs``; keys that vary in lockstep (a value and
    the interpolations of it, e.g. ``optim.lr`` and ``optim.optimizer.lr``) are named once, by the
    shortest name."""
    configs = [dict(flatten(run.results.get("config") or {})) for run in runs]
    keys = sorted(set().union(*configs) - ignore, key=lambda k: (len(k), k))
    seen: set[tuple[str, ...]] = set()
    differ = []
    for key in keys:
        values = tuple(value_label(c.get(key)) for c in configs)
        if len(set(values)) > 1 and values not in seen:
            seen.add(values)
            differ.append(key)
    return sorted(differ)
