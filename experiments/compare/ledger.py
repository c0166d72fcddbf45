"""What runs cost: the compute ledger of many run records added up (:func:`spent`) and said in a
few lines (:func:`ledger_lines`), under ``mixerlab compare``'s table and in ``mixerlab study
status``.

Each record's ``compute`` holds one segment per launch of the run (host, machine, torch threads,
devices, wall seconds; :mod:`mixerlab.lightning_modules.record`). A CPU segment spends wall_s x
threads core-seconds, an accelerator segment wall_s x devices GPU-seconds. Records older than the
ledger only know their ``wall_s``: they count in the wall hours and are named apart, since no one
knows how many threads they ran on. A damaged segment (a hand edit) counts as unknown, never
stops the comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mixerlab.experiments.compare.runs import Run
from mixerlab.lightning_modules.record import (
    core_hours,
    gpu_hours,
    on_accelerator,
    segment_threads,
    segment_wall_s,
    segments,
    unknown_wall_hours,
)


@dataclass(frozen=True)
class Machine:
    """The launches that ran on one kind of machine: ``AMD EPYC x 2 threads`` or ``NVIDIA H100 x
    1 device``, with how many launches and the core-hours (or GPU-hours) they spent."""

    name: str
    launches: int
    hours: float
    gpu: bool


@dataclass(frozen=True)
class Ledger:
    """The compute of a set of runs: how many, their wall, core and GPU hours (every launch,
    resumed ones included), the machines, and the runs without a ledger (``unledgered``, with
    the wall hours whose thread count is unknown)."""

    runs: int = 0
    wall_hours: float = 0.0
    core_hours: float = 0.0
    gpu_hours: float = 0.0
    machines: tuple[Machine, ...] = ()
    unledgered: int = 0
    unledgered_wall_hours: float = 0.0


def _machine_name(segment: dict[str, Any]) -> str | None:
    """How a segment's machine is named in the ledger; None for an unknown one."""
    machine = segment.get("machine")
    if not isinstance(machine, dict):
        return None
    if on_accelerator(segment):
        devices = segment.get("devices")
        count = devices if isinstance(devices, int) and not isinstance(devices, bool) else 1
        return f"{machine['accelerator']} x {count} device{'s' * (count != 1)}"
    threads = segment_threads(segment)
    if threads is None:
        return None
    cpu = machine.get("cpu") if isinstance(machine.get("cpu"), str) else "unknown cpu"
    return f"{cpu} x {threads:g} thread{'s' * (threads != 1)}"


def record_wall_hours(record: dict[str, Any]) -> float:
    """A record's wall hours: its launches' where it has a ledger, else its ``wall_s``."""
    compute = segments(record.get("compute"))
    if compute:
        return sum(segment_wall_s(s) for s in compute) / 3600
    wall_s = record.get("wall_s")
    number = isinstance(wall_s, (int, float)) and not isinstance(wall_s, bool)
    return wall_s / 3600 if number and 0 <= wall_s < float("inf") else 0.0


def spent(records: Sequence[dict[str, Any]]) -> Ledger:
    """The ledger of run records (decoded ``results.json`` objects)."""
    machines: dict[str, list[float]] = {}
    gpu_names: set[str] = set()
    unledgered, unknown = 0, 0.0
    for record in records:
        for segment in segments(record.get("compute")):
            name = _machine_name(segment)
            if name is None:
                continue
            if on_accelerator(segment):
                gpu_names.add(name)
            hours = gpu_hours([segment]) if on_accelerator(segment) else core_hours([segment])
            launches, total = machines.get(name, [0, 0.0])
            machines[name] = [launches + 1, total + hours]
        if (hours := unknown_wall_hours(record)) > 0:
            unledgered, unknown = unledgered + 1, unknown + hours
    return Ledger(
        runs=len(records),
        wall_hours=sum(record_wall_hours(r) for r in records),
        core_hours=sum(core_hours(r.get("compute")) for r in records),
        gpu_hours=sum(gpu_hours(r.get("compute")) for r in records),
        machines=tuple(
            Machine(name, int(launches), hours, name in gpu_names)
            for name, (launches, hours) in sorted(machines.items(), key=lambda kv: -kv[1][1])
        ),
        unledgered=unledgered,
        unledgered_wall_hours=unknown,
    )


def runs_spent(runs: Sequence[Run]) -> Ledger:
    """The ledger of the readable runs among ``runs``."""
    return spent([run.results for run in runs if run.problem is None])


def hours(value: float) -> str:
    """Hours, three significant digits (``0.4``, ``12.3``, ``0.00123``), whole beyond 1000."""
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


def ledger_lines(ledger: Ledger) -> list[str]:
    """The ledger in a few lines: the total, one line per machine, the runs without a ledger."""
    if not ledger.runs:
        return []
    core = (
        "core-hours unknown"
        if ledger.unledgered == ledger.runs
        else f"{hours(ledger.core_hours)} core-hours"
    )
    runs = f"{ledger.runs} run{'s' * (ledger.runs != 1)}"
    total = f"{runs}: {hours(ledger.wall_hours)} wall-hours, {core}"
    if ledger.gpu_hours:
        total += f", {hours(ledger.gpu_hours)} GPU-hours"
    lines = [total]
    for machine in ledger.machines:
        unit = "GPU-hours" if machine.gpu else "core-hours"
        launches = f"{machine.launches} launch{'es' * (machine.launches != 1)}"
        lines.append(f"{machine.name}: {launches}, {hours(machine.hours)} {unit}")
    if ledger.unledgered:
        lines.append(
            f"{ledger.unledgered} run{'s' * (ledger.unledgered != 1)} without a ledger: "
            f"{hours(ledger.unledgered_wall_hours)} wall-hours (threads unknown, not in the "
            "core-hours)"
        )
    return lines
