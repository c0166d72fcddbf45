"""What a study's remaining jobs will cost: its jobs expanded from ``study.yaml``, each job's
cost signature, the seconds per step measured on records of the same signature, and an estimate.

    jobs = expand(study.commands)                # the jobs Hydra's multirun would launch
    plans = plan_jobs(jobs)                      # each job's cost signature and length
    rate = combine([measure(dir, record), ...])  # seconds per step, per validation, overhead
    seconds = job_seconds(rate, plans[job.name], done_step=0)

**Expanding.** A command of ``study.yaml`` is what ``mixerlab train [-m] <overrides>`` was given.
A multirun expands as Hydra's basic sweeper does: the sweep preset's ``hydra.sweeper.params``
first, then the command line (a key given on both: the command line wins), each comma list,
``choice(...)``, ``range(...)`` or ``glob(...)`` over a config group giving its values, and the
jobs are their product. A job's overrides are written as Hydra writes them into the job's
``.hydra/overrides.yaml`` (``optim.lr=0.001``), so its name is the name of the folder it trains
into (:func:`mixerlab.experiments.run.study.job_name`).

**The cost signature** of a job is its composed, validated config (as its ``results.json``
records it) less :data:`COST_FREE`: the keys that change what a run learns or how it is shown
and stored, but not what one optimiser step or one validation costs. The seed draws other data
and weights of the same shapes; the optimiser's settings (learning rate, weight decay, schedule)
change numbers, not the work per step (AdamW's update is a few element-wise passes whatever its
values); ``trainer.max_steps`` and ``trainer.val_check_interval`` say how many steps and
validations there are, which the estimate counts itself; the name, logger, callbacks, dataset
cache, start checkpoint and overwrite flag are bookkeeping. Everything else (mixer, model width
and depth, task and sequence length, batch size, precision, devices, validation batches) stays:
it changes the work. So the learning-rate and seed axes of a sweep share one signature, and a
pilot of one of their jobs measures all of them.

**Measuring** reads a run's ``metrics.csv``: the seconds per step are the median over
consecutive rows of wall-seconds per step (a validation between two rows is one interval out of
many, and the median ignores it), a validation's seconds are the jump from the row before a
validation row, less the steps between, and the overhead is what is left at either end (building
data and model, the sanity check, the last checkpoint). A record without such rows is measured
as its wall seconds over its steps (``rough``). Each estimate says how many measurements it rests
on and which machines they came from; measurements of this machine (same CPU model and threads)
are preferred where there are any.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException

from mixerlab.experiments.run.config_values import flatten
from mixerlab.experiments.run.schema import validate_config
from mixerlab.experiments.run.study import Command
from mixerlab.lightning_modules.record import HISTORY_FILE, segment_threads, segments

# Config keys (and whole nodes) that do not change what a step or a validation costs: why each,
# in the module docstring.
COST_FREE = (
    "seed",
    "optim",
    "trainer.max_steps",
    "trainer.val_check_interval",
    "name",
    "logger",
    "callbacks",
    "cache_dir",
    "ckpt_path",
    "overwrite",
    "study",
)
# Overrides that say how or where jobs are launched, not what they train: left out when a job's
# config is composed.
LAUNCH_KEYS = ("hydra", "launcher", "sweep", "study")
# Hydra's grid sweeper; another (Optuna) picks its jobs as it goes: no grid to expand.
GRID_SWEEPER = "BasicSweeper"


class StudyPlanError(ValueError):
    """A study whose jobs cannot be expanded or composed; the message says why."""


def _among(key: str, keys: Iterable[str]) -> bool:
    """``key`` is one of ``keys`` or inside one of them (``optim.lr`` is in ``optim``)."""
    return any(key == k or key.startswith((f"{k}.", f"{k}/")) for k in keys)


def sets(override: str, keys: Iterable[str]) -> bool:
    """The override (``key=value``, Hydra's ``+``/``++``/``~`` prefixes allowed) sets one of
    ``keys`` or a key inside one of them."""
    return _among(override.lstrip("+~").split("=", 1)[0], keys)


# ---------------------------------------------------------------------------- the jobs
@dataclass(frozen=True)
class Job:
    """One job of a study: the overrides it trains with, as Hydra records them."""

    overrides: tuple[str, ...]
    multirun: bool


def _grid(parsed: Sequence[Override]) -> list[list[str]]:
    """The jobs of a grid sweep, as Hydra's basic sweeper makes them: one override per key (a
    later one replaces an earlier one of the same key, in its place), swept ones expanded, the
    product of all."""
    by_key: dict[str, list[str]] = {}
    for override in parsed:
        key = override.get_key_element()
        if not override.is_sweep_override():
            by_key[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            by_key[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise StudyPlanError(
                f"{override.input_line}: an interval has no grid; a study expands grid sweeps"
            )
    jobs: list[list[str]] = [[]]
    for values in by_key.values():
        jobs = [[*job, value] for job in jobs for value in values]
    return jobs


def expand(commands: Sequence[Command]) -> list[Job]:
    """The jobs of a study's commands, in launch order; a job two commands share is listed
    once. StudyPlanError for a command whose jobs cannot be told (an Optuna sweep, a bad
    override)."""
    jobs: dict[tuple[str, ...], Job] = {}
    with initialize_config_module(config_module="mixerlab.conf", version_base="1.3"):
        for command in commands:
            overrides = list(command.overrides)
            try:
                expanded = _expand_one(overrides) if command.multirun else [overrides]
            except HydraException as err:
                raise StudyPlanError(
                    f"the command {' '.join(command.argv('<study>'))} cannot be expanded: {err}"
                ) from err
            for job in expanded:
                jobs.setdefault(tuple(job), Job(tuple(job), command.multirun))
    return list(jobs.values())


def _expand_one(overrides: list[str]) -> list[list[str]]:
    """One multirun command's jobs (inside an initialised Hydra)."""
    loader = GlobalHydra.instance().config_loader()
    parser = OverridesParser.create(config_loader=loader)
    parsed = parser.parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    cfg = compose("config", overrides=fixed, return_hydra_config=True)  # the preset's params
    sweeper = cfg.hydra.sweeper
    if not str(sweeper._target_).endswith(GRID_SWEEPER):
        raise StudyPlanError(
            f"{sweeper._target_} chooses its jobs as it goes: a study's jobs are a grid "
            "(sweep=mixers, mixers_lr, lr_grid, ...)"
        )
    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    return _grid(parser.parse_overrides([*params, *overrides]))


# ---------------------------------------------------------------------------- cost signature
Signature = tuple[tuple[str, str], ...]


def cost_signature(config: Mapping[str, Any]) -> Signature:
    """The keys of a run's config that change what it costs per step, with their values (as
    JSON): equal for two runs whose steps and validations cost the same (:data:`COST_FREE`)."""
    plain = json.loads(json.dumps(config, default=str))
    return tuple(
        (key, json.dumps(value, sort_keys=True))
        for key, value in sorted(flatten(plain))
        if not _among(key, COST_FREE)
    )


@dataclass(frozen=True)
class JobPlan:
    """What one job will run: its cost signature, steps and validation interval."""

    signature: Signature
    max_steps: int
    val_check_interval: int


def _composed_overrides(overrides: Sequence[str]) -> tuple[str, ...]:
    """The overrides that matter to a job's cost signature and length: its own, less the launch
    keys and the cost-free ones (composing once for every seed and learning rate)."""
    length = ("trainer.max_steps", "trainer.val_check_interval")
    return tuple(
        o
        for o in overrides
        if not sets(o, LAUNCH_KEYS) and (sets(o, length) or not sets(o, COST_FREE))
    )


def plan_jobs(jobs: Sequence[Job]) -> dict[tuple[str, ...], JobPlan]:
    """Each job's plan (by its overrides): its config composed and validated as ``mixerlab
    train`` would, once for all jobs that differ only in cost-free keys. Raises StudyPlanError
    for a job whose config cannot be composed."""
    plans: dict[tuple[str, ...], JobPlan] = {}
    composed: dict[tuple[str, ...], JobPlan] = {}
    with initialize_config_module(config_module="mixerlab.conf", version_base="1.3"):
        for job in jobs:
            key = _composed_overrides(job.overrides)
            if key not in composed:
                try:
                    config = validate_config(compose("config", overrides=list(key)))
                except Exception as err:  # Hydra's and the schema's errors alike
                    raise StudyPlanError(
                        f"the job {' '.join(job.overrides)} cannot be composed: {err}"
                    ) from err
                trainer = config["trainer"]
                composed[key] = JobPlan(
                    cost_signature(config),
                    int(trainer["max_steps"]),
                    int(trainer["val_check_interval"]),
                )
            plans[job.overrides] = composed[key]
    return plans


# ---------------------------------------------------------------------------- measuring
@dataclass(frozen=True)
class Measurement:
    """One run's timings: seconds per optimiser step, per validation (None: none measured),
    the fixed overhead of a launch (data, model, sanity check, the last checkpoint), the steps
    it rests on, where it ran (``machine``: ``cpu x N threads``, None unknown) and whether it is
    ``rough`` (wall seconds over steps, validations and overhead included)."""

    source: Path
    step_s: float
    val_s: float | None
    overhead_s: float
    steps: int
    machine: str | None
    rough: bool = False


def machine_label(cpu: str | None, threads: float | None) -> str | None:
    """How measurements name where they ran: ``AMD EPYC x 2 threads``."""
    if cpu is None or threads is None:
        return None
    return f"{cpu} x {threads:g} thread{'s' * (threads != 1)}"


def _record_machine(record: Mapping[str, Any]) -> str | None:
    """Where a record's last launch ran; None where it has no ledger or ran on a GPU (its
    timings are then named by the device)."""
    launches = segments(record.get("compute"))
    if not launches:
        return None
    last = launches[-1]
    machine = last.get("machine") if isinstance(last.get("machine"), dict) else {}
    accelerator = machine.get("accelerator")
    if isinstance(accelerator, str) and accelerator != "cpu":
        return accelerator
    cpu = machine.get("cpu")
    return machine_label(cpu if isinstance(cpu, str) else None, segment_threads(last))


def _rows(path: Path, last_step: int) -> list[tuple[float, float, bool]]:
    """``(steps trained, wall_s, is a validation row)`` of each row of a metrics.csv; empty
    when it cannot be read.

    Lightning logs a step's training metrics, and a validation made during ``fit``, at the
    step's index (global step - 1), a row of neither (the parameter count, logged before the
    first step) and the validation after ``fit`` (at the run's last step) at the global step."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []
    found = []
    for row in rows:
        try:
            step, wall = float(row.get("step") or "nan"), float(row.get("wall_s") or "nan")
        except ValueError:
            continue
        if not (math.isfinite(step) and math.isfinite(wall)):
            continue
        logged = {k.split("/", 1)[0] for k, v in row.items() if k and "/" in k and v}
        val = "val" in logged
        at_index = "train" in logged or (val and step != last_step)
        found.append((step + 1 if at_index else step, wall, val))
    return found


def measure(run_dir: Path, record: Mapping[str, Any]) -> Measurement | None:
    """The timings of the run in ``run_dir`` (``record``: its results.json); None where it
    trained no step."""
    steps, wall_s = record.get("last_step"), record.get("wall_s")
    if not isinstance(steps, int) or steps <= 0:
        return None
    wall_s = wall_s if isinstance(wall_s, (int, float)) and math.isfinite(wall_s) else None
    machine = _record_machine(record)
    rows = _rows(run_dir / str(record.get("history") or HISTORY_FILE), steps)
    pairs = list(itertools.pairwise(rows))
    rates = [(w1 - w0) / (s1 - s0) for (s0, w0, _), (s1, w1, _) in pairs if s1 > s0 and w1 >= w0]
    if not rates:
        if wall_s is None or wall_s <= 0:
            return None
        return Measurement(run_dir, wall_s / steps, None, 0.0, steps, machine, rough=True)
    step_s = statistics.median(rates)
    vals = [
        max(0.0, (w1 - w0) - (s1 - s0) * step_s)
        for (s0, w0, _), (s1, w1, val) in pairs
        if val and s1 >= s0
    ]
    val_s = statistics.median(vals) if vals else None
    first_step, first_wall, first_is_val = rows[0]
    before = first_wall - first_step * step_s - ((val_s or 0.0) if first_is_val else 0.0)
    after = wall_s - rows[-1][1] if wall_s is not None else 0.0
    overhead = max(0.0, before) + max(0.0, after)
    return Measurement(run_dir, step_s, val_s, overhead, steps, machine)


@dataclass(frozen=True)
class Rate:
    """The measurements of one cost signature combined (medians): what the estimate uses,
    ``n`` the measurements it rests on, ``machines`` where they ran."""

    step_s: float
    val_s: float
    overhead_s: float
    n: int
    machines: tuple[str, ...]
    rough: bool
    here: bool  # measured on this machine (same CPU model and threads)


def combine(measurements: Sequence[Measurement], here: str | None) -> Rate | None:
    """One rate from the measurements of a signature, those of this machine (``here``) alone
    where there are any; None without measurements."""
    if not measurements:
        return None
    local = [m for m in measurements if here is not None and m.machine == here]
    used = local or list(measurements)
    vals = [m.val_s for m in used if m.val_s is not None]
    return Rate(
        step_s=statistics.median(m.step_s for m in used),
        val_s=statistics.median(vals) if vals else 0.0,
        overhead_s=statistics.median(m.overhead_s for m in used),
        n=len(used),
        machines=tuple(sorted({m.machine or "an unknown machine" for m in used})),
        rough=all(m.rough for m in used),
        here=bool(local),
    )


def validations(after: int, until: int, every: int) -> int:
    """Validations a run makes going from step ``after`` to ``until``: one every ``every``
    steps, and one at the end unless the last step is one of those."""
    if until <= after:
        return 0
    every = max(1, every)
    count = until // every - after // every
    return count + (1 if until % every else 0)


def job_seconds(rate: Rate, plan: JobPlan, done_step: int = 0) -> float:
    """Wall seconds a job still needs: one launch's overhead, its remaining steps and
    validations (a rough rate holds validations and overhead in its steps already)."""
    remaining = max(0, plan.max_steps - done_step)
    if remaining == 0:
        return 0.0
    seconds = remaining * rate.step_s
    if not rate.rough:
        seconds += rate.overhead_s
        seconds += validations(done_step, plan.max_steps, plan.val_check_interval) * rate.val_s
    return seconds
