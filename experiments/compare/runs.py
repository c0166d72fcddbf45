"""Loading runs: every ``results.json`` below the given paths, and lookups into it.

``results.json`` is the contract the train app writes from the start of a run to its end: the
run's status (``running`` until it ends ``finished``, ``failed``, ``interrupted`` or
``diverged``), mixer, task, seed, numbers, best and final metrics, its config, the name of its
history file (``metrics.csv``) and who is writing it (process id, host, last step).

A study's pilots (its ``pilot/`` folder) time jobs for ``mixerlab study status``: they are left
out when the study is compared, and compared when their folder is given.

A file that cannot be read, is not JSON, or holds a field of the wrong type (``FIELDS`` of
:mod:`mixerlab.lightning_modules.record`) never stops the comparison: its run is kept with the
reason (``Run.problem``) and reported by path. A ``running`` run whose process is gone from
this machine was killed without a word (``kill -9``, the out-of-memory killer): its status reads
``killed``. A run on another host, or one whose process id was reused, cannot be told apart from
a live run; its last update time is shown instead.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixerlab.experiments.run.config_values import flatten
from mixerlab.experiments.run.study import STUDY_FILE
from mixerlab.lightning_modules.record import RESULTS_FILE, read_record, shape_problem

RESULT_KEYS = ("mixer", "task")  # results.json fields usable with --by; the rest is config
# A study's pilots (``mixerlab study pilot``): short runs that time a job, not results of the
# study. Comparing a study leaves them out; a pilot folder given itself is compared.
PILOT_DIR = "pilot"


@dataclass(frozen=True)
class Run:
    """One run directory and the results.json it wrote; ``problem`` says why that file cannot be
    used (then ``results`` is empty), ``process_gone`` that the run says ``running`` but its
    process no longer exists here."""

    dir: Path
    results: dict[str, Any]
    problem: str | None = None
    process_gone: bool = False

    @property
    def status(self) -> str:
        """``unreadable``, ``killed``, or the status results.json records."""
        if self.problem is not None:
            return "unreadable"
        if self.process_gone:
            return "killed"
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
        if path.is_file() and path.name != RESULTS_FILE:
            raise ValueError(
                f"{path} is not a {RESULTS_FILE}: pass run folders or their {RESULTS_FILE}"
            )
        for found in [path] if path.is_file() else sorted(path.rglob(RESULTS_FILE)):
            if not _in_pilot(found, path):
                files.setdefault(found.resolve(), found)
    if not files:
        raise ValueError(
            f"no {RESULTS_FILE} found below {', '.join(map(str, paths))}. Every run writes one "
            "when it finishes or fails: make runs with `mixerlab train mixer=attention` or a "
            "sweep like `mixerlab train -m mixer=attention,gmlp seed=0,1`, then pass their output "
            "folder (runs/, or runs/multirun/ for sweeps)"
        )
    return [read_run(file) for file in files.values()]


def _in_pilot(found: Path, given: Path) -> bool:
    """``found`` lies in a study's pilot folder below the folder ``given``."""
    parts = found.relative_to(given).parts[:-1] if given.is_dir() else ()
    return any(
        part == PILOT_DIR and (given.joinpath(*parts[:index]) / STUDY_FILE).is_file()
        for index, part in enumerate(parts)
    )


def _process_gone(results: dict[str, Any]) -> bool:
    """The run says ``running`` from a process of this machine that no longer exists. Checked
    on POSIX only (``os.kill(pid, 0)`` probes there; on Windows it would end the process)."""
    pid, host = results.get("pid"), results.get("host")
    if results.get("status") != "running" or pid is None or pid <= 0 or os.name != "posix":
        return False
    if host not in (None, socket.gethostname()):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # another user's process, or no such pid number
        return False
    return False


def read_run(file: Path) -> Run:
    """The run of one results.json; a file that cannot be used becomes a run with a problem."""
    try:
        data = read_record(file)
    except OSError as err:
        return Run(file.parent, {}, problem=f"cannot be read ({err.strerror or err})")
    except (ValueError, RecursionError) as err:  # bad JSON or bad UTF-8; nesting too deep
        return Run(file.parent, {}, problem=f"is not valid JSON ({err})")
    if problem := shape_problem(data):
        return Run(file.parent, {}, problem=problem)
    return Run(file.parent, data, process_gone=_process_gone(data))


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
