"""Loading runs: every ``results.json`` below the given paths, and lookups into it.

``results.json`` is the contract the train app writes at the end of a run and on failure: the
run's status, mixer, task, seed, numbers, best and final metrics, its config and the name of its
history file (``metrics.csv``).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = "results.json"
RESULT_KEYS = ("mixer", "task")  # results.json fields usable with --by; the rest is config


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


def flatten(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a nested config."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from flatten(value, f"{prefix}{key}.")
    elif prefix:
        yield prefix[:-1], node


def available_keys(runs: Sequence[Run]) -> list[str]:
    """Keys usable with --by: mixer, task and every config leaf, seed excluded."""
    keys = set(RESULT_KEYS)
    for run in runs:
        keys.update(k for k, _ in flatten(run.results.get("config") or {}))
    return sorted(keys - {"seed"})


def check_key(runs: Sequence[Run], key: str, flag: str) -> None:
    """Refuse a grouping key no run has (suggesting close ones) and the seed."""
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


def value_label(value: Any) -> str:
    """A config value as one table cell or group label: ``-`` for none, ``1e-3`` short."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)
