"""A run's record, defined once for the run that writes it and for every reader (``mixerlab
compare``, the run-identity check, the sweep summary): the files of a run folder and the fields
of ``results.json``. Plain Python only, neither torch nor Lightning: ``mixerlab compare`` reads
records without loading either.

A run folder holds ``results.json`` (:class:`RunResults`), ``metrics.csv`` (one row per logging
event: ``step``, ``wall_s``, the metrics) and ``checkpoints/`` (``last.ckpt``, ``best.ckpt``).
Files are rewritten atomically (:func:`write_atomic`), so a reader never sees half a file, even
while the run is still writing or after it was killed. ``results.json`` exists from the start of
a run: ``running``, with the process id, host and last step, until the run ends ``finished``,
``failed``, ``interrupted`` or ``diverged``; a run killed hard keeps saying ``running`` with a
process that no longer exists. Its ``compute`` is the run's ledger: one segment per launch
(host, machine, threads, devices, wall seconds, the steps it went from and to), so a run resumed
on another machine says what each part cost; :func:`core_hours` and :func:`gpu_hours` add them up.

Records written before mixerlab installed as one package name their classes by the old
top-level modules (``lightning_modules.modules.WarmupCosine``); read through :func:`read_record`,
each such ``_target_`` names the same class under ``mixerlab.``, so old run folders still
compare, resume and pass the run-identity check.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"
HISTORY_FILE = "metrics.csv"
CHECKPOINT_DIR = "checkpoints"  # last.ckpt, best.ckpt
# The checkpoint a run resumes from: Lightning's name for ModelCheckpoint(save_last=True)'s.
LAST_CHECKPOINT = "last.ckpt"

# The JSON type readers accept for a field (null is accepted for every field: not known yet).
STRING = {"json": "string"}
INTEGER = {"json": "integer"}
NUMBER = {"json": "number"}
OBJECT = {"json": "object"}
ARRAY = {"json": "array"}


@dataclass
class RunResults:
    """The fields of ``results.json``, each with the JSON type readers accept (:data:`FIELDS`)."""

    status: str = field(metadata=STRING)  # running | finished | failed | interrupted | diverged
    mixer: str = field(metadata=STRING)
    task: str = field(metadata=STRING)
    seed: int = field(metadata=INTEGER)
    params: int = field(metadata=NUMBER)
    flops_per_token: float = field(metadata=NUMBER)
    metrics: dict[str, float] = field(metadata=OBJECT)  # the last logged value of each metric
    best: dict[str, float] = field(metadata=OBJECT)  # the best value of each validation metric
    tokens_per_s: float = field(metadata=NUMBER)  # training tokens per second, over the run
    wall_s: float = field(metadata=NUMBER)
    wandb_run_id: str | None = field(metadata=STRING)
    checkpoints: dict[str, str | None] = field(metadata=OBJECT)
    config: dict[str, Any] = field(metadata=OBJECT)
    error: str | None = field(metadata=STRING)
    history: str = field(default=HISTORY_FILE, metadata=STRING)
    # what learning nothing scores, by metric: {"value", "label", "how"}
    chance: dict[str, dict[str, Any]] = field(default_factory=dict, metadata=OBJECT)
    # the model.budget the model was sized to, as mixerlab's budget solver solved it: measure,
    # target, reached, solved_for, value (the d_model or ffn_mult it gave), tolerance; None: no
    # budget
    budget: dict[str, Any] | None = field(default=None, metadata=OBJECT)
    # floats of decoding state per sequence at max_len
    state_size: int | None = field(default=None, metadata=NUMBER)
    # who wrote this and how far it got: a `running` run whose process is gone was killed
    pid: int | None = field(default=None, metadata=INTEGER)
    host: str | None = field(default=None, metadata=STRING)
    last_step: int = field(default=0, metadata=INTEGER)
    updated_at: str | None = field(default=None, metadata=STRING)  # ISO 8601, UTC
    # what the run cost and where: one segment per launch (:data:`SEGMENT_KEYS`), a resumed run
    # appending one; the last is the launch writing now. Empty in records older than the ledger.
    compute: list[dict[str, Any]] = field(default_factory=list, metadata=ARRAY)

    def core_hours(self) -> float:
        """CPU core-hours of the run's launches with a known thread count (:func:`core_hours`)."""
        return core_hours(self.compute)

    def gpu_hours(self) -> float:
        """GPU-hours of the run's launches on an accelerator (:func:`gpu_hours`)."""
        return gpu_hours(self.compute)

    def write(self, run_dir: str | Path) -> Path:
        """Write ``<run_dir>/results.json`` atomically; returns its path."""
        payload = asdict(self)
        for key in ("metrics", "best"):
            payload[key] = {k: _finite_or_none(v) for k, v in payload[key].items()}
        for key in ("tokens_per_s", "flops_per_token"):
            payload[key] = _finite_or_none(payload[key])
        path = Path(run_dir) / RESULTS_FILE
        write_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")
        return path


# The JSON type of each results.json field, as readers check it; ``best``/``metrics`` map metric
# names to numbers.
FIELDS: dict[str, str] = {f.name: f.metadata["json"] for f in fields(RunResults)}


# ---------------------------------------------------------------------------- the compute ledger
# One launch of a run, an entry of ``compute``: the host, the machine (cpu model, cores as
# os.cpu_count() counts them, accelerator "cpu" or the CUDA device's name, platform, torch
# version), the torch threads and devices it trained with, its wall seconds (from the launch to
# its last write), the optimiser steps it went from and reached, and when it started (ISO 8601,
# UTC). A segment carried over from a record older than the ledger has ``threads`` and
# ``machine`` null: its wall time is known, what it ran on is not.
SEGMENT_KEYS = ("host", "machine", "threads", "devices", "wall_s", "from_step", "to_step",
                "started_at")  # fmt: skip
MACHINE_KEYS = ("cpu", "cores", "accelerator", "platform", "torch")


def _number(value: Any) -> float | None:
    """A finite, non-negative JSON number, else None: the ledger's readers take a hand-edited or
    damaged segment as unknown rather than fail on it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def segments(compute: Any) -> list[dict[str, Any]]:
    """The segments of a record's ``compute`` that are objects (a damaged entry is skipped)."""
    return [s for s in compute if isinstance(s, dict)] if isinstance(compute, list) else []


def on_accelerator(segment: dict[str, Any]) -> bool:
    """The segment trained on a GPU (or another accelerator), not on the CPU."""
    machine = segment.get("machine")
    accelerator = machine.get("accelerator") if isinstance(machine, dict) else None
    return isinstance(accelerator, str) and accelerator != "cpu"


def segment_wall_s(segment: dict[str, Any]) -> float:
    """The segment's wall seconds; 0 where unknown."""
    return _number(segment.get("wall_s")) or 0.0


def segment_threads(segment: dict[str, Any]) -> float | None:
    """The torch threads a CPU segment trained with; None where unknown (a record older than
    the ledger)."""
    threads = _number(segment.get("threads"))
    return threads if threads else None


def core_hours(compute: Any) -> float:
    """CPU core-hours of ``compute`` (a record's segments): wall_s x threads of every CPU segment
    whose thread count is known, over 3600. Threads, not cores: a run given 2 of 16 cores spent
    2 core-seconds a second, whatever the machine has. GPU segments count in :func:`gpu_hours`."""
    return sum(
        segment_wall_s(s) * threads / 3600
        for s in segments(compute)
        if not on_accelerator(s) and (threads := segment_threads(s))
    )


def gpu_hours(compute: Any) -> float:
    """GPU-hours of ``compute``: wall_s x devices of every accelerator segment, over 3600."""
    return sum(
        segment_wall_s(s) * (_number(s.get("devices")) or 1.0) / 3600
        for s in segments(compute)
        if on_accelerator(s)
    )


def unknown_wall_hours(record: dict[str, Any]) -> float:
    """Wall hours of a record that ran on no known thread count: its whole ``wall_s`` for a
    record older than the ledger, else its CPU segments without threads."""
    compute = segments(record.get("compute"))
    if not compute:
        return (_number(record.get("wall_s")) or 0.0) / 3600
    return sum(
        segment_wall_s(s) / 3600
        for s in compute
        if not on_accelerator(s) and segment_threads(s) is None
    )


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf: a diverged metric becomes null rather than an unreadable file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` (str as UTF-8) through a temporary file in the same folder and
    ``os.replace``, so a reader never sees half a file, even while it is rewritten or after the
    writer was killed. The temporary name holds the process id: concurrent writers never share
    one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- reading
def _json_type(value: Any) -> str:
    """The JSON type of a decoded value, as :data:`FIELDS` names it."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    names = {float: "number", str: "string", list: "array", dict: "object"}
    return next((name for kind, name in names.items() if isinstance(value, kind)), "null")


def _is(value: Any, expected: str) -> bool:
    found = _json_type(value)
    return found in (expected, "null") or (expected, found) == ("number", "integer")


def shape_problem(data: Any) -> str | None:
    """Why decoded results.json ``data`` is not a record a reader can use, or None. Missing
    fields are no problem: a reader takes them as not known."""
    if not isinstance(data, dict):
        return f"holds a JSON {_json_type(data)}, not the results object"
    for name, expected in FIELDS.items():
        if not _is(data.get(name), expected):
            return f"has a JSON {_json_type(data[name])} for {name!r}, where {expected}s belong"
    for name in ("best", "metrics"):
        for metric, value in (data.get(name) or {}).items():
            if not _is(value, "number"):
                return f"has a JSON {_json_type(value)} for {name}[{metric!r}], not a number"
    for index, segment in enumerate(data.get("compute") or []):
        if not isinstance(segment, dict):
            return f"has a JSON {_json_type(segment)} for compute[{index}], not an object"
    return None


# The top-level packages mixerlab installed before everything moved under ``mixerlab.``.
LEGACY_PACKAGES = ("mixers", "lightning_modules", "experiments", "conf")
PACKAGE = "mixerlab"


def current_target(target: str) -> str:
    """A ``_target_`` path of a record written before the move, as it is named now."""
    if target.split(".", 1)[0] in LEGACY_PACKAGES and "." in target:
        return f"{PACKAGE}.{target}"
    return target


def upgraded(value: Any) -> Any:
    """``value`` (a decoded record or a part of it) with every ``_target_`` named as now."""
    if isinstance(value, dict):
        return {
            key: current_target(item)
            if key == "_target_" and isinstance(item, str)
            else upgraded(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [upgraded(item) for item in value]
    return value


# Config keys added since a record could be written, each with the value that does what a run
# without it did (``model.encoder``: one stack; ``model.prefix_lm``: plainly causal): an older
# record's config reads as if written now, so its run is still skipped, resumed and grouped as the
# same config.
ADDED_CONFIG_KEYS = {"model.encoder": None, "model.prefix_lm": False}


def decode_record(data: bytes | str) -> Any:
    """A run record's JSON text decoded, its class paths named as now and its config given the
    keys added since (:data:`ADDED_CONFIG_KEYS`). Raises what decoding raises (``ValueError``,
    ``RecursionError``)."""
    record = upgraded(json.loads(data))
    config = record.get("config") if isinstance(record, dict) else None
    for dotted, default in ADDED_CONFIG_KEYS.items() if isinstance(config, dict) else ():
        *parents, last = dotted.split(".")
        node: Any = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.setdefault(last, default)
    return record


def read_record(path: Path) -> Any:
    """The decoded JSON of a run record, its class paths named as now. Raises what reading and
    decoding raise (``OSError``, ``ValueError``, ``RecursionError``): callers say why a record
    cannot be used in their own words."""
    return decode_record(path.read_bytes())


def read_results(run_dir: Path) -> Any:
    """The record of the run in ``run_dir`` (see :func:`read_record`), None where it has no
    ``results.json``."""
    path = run_dir / RESULTS_FILE
    return read_record(path) if path.exists() else None
