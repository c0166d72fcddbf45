"""``mixerlab study``: where a study stands, what it has cost and what the rest will take.

    mixerlab study status mixers_mqar        # or its folder: studies/mixers_mqar
    mixerlab study pilot mixers_mqar         # a short run of each cost signature not measured

``status`` expands the study's commands (``study.yaml``) into their jobs as ``mixerlab train -m``
would, matches each to its folder (``runs/<job name>``) and says which finished, which are
running or were interrupted (and at which step) and which never started; then the compute its
runs spent (the ledger of their records) and an estimate of what the remaining jobs will take:
for each cost signature, seconds per step, per validation and per launch measured on the
study's records and pilots of that signature, times what each job has left
(:mod:`mixerlab.experiments.run.study_plan`). A signature no record measures is listed as
needing a pilot; ``pilot`` trains one job of each for ``--steps`` steps into
``pilot/<job name>`` (records only, no W&B), and ``status`` then uses it.

Exit status: 0 done, 1 a pilot failed, 2 a study that cannot be read or expanded.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mixerlab.experiments.compare.ledger import hours, ledger_lines, runs_spent
from mixerlab.experiments.compare.runs import PILOT_DIR, Run, read_run
from mixerlab.experiments.run.study import Study, StudyError, job_name, read_study
from mixerlab.experiments.run.study_plan import (
    COST_FREE,
    LAUNCH_KEYS,
    Job,
    JobPlan,
    Measurement,
    Rate,
    Signature,
    StudyPlanError,
    combine,
    cost_signature,
    expand,
    job_seconds,
    machine_label,
    measure,
    plan_jobs,
    sets,
)
from mixerlab.lightning_modules.record import CHECKPOINT_DIR, LAST_CHECKPOINT, RESULTS_FILE

COMMAND = "study"
HELP = "a study's jobs (finished, interrupted, to do), core-hours spent, estimate; pilots"

DEFAULT_PILOT_STEPS = 20
# What a pilot sets beside its job's overrides: its length, no W&B run, no progress bar.
PILOT_SETTINGS = ("logger=csv", "callbacks.progress_bar=false")


@dataclass(frozen=True)
class JobState:
    """One job of the study: its name (its folder under ``runs/``), what it will run, and its
    record (None: not started)."""

    name: str
    job: Job
    plan: JobPlan
    run: Run | None

    @property
    def state(self) -> str:
        """``not started`` or the record's status (``killed``: ``running`` from a process gone)."""
        return "not started" if self.run is None else self.run.status

    @property
    def last_step(self) -> int:
        step = self.run.results.get("last_step") if self.run is not None else None
        return step if isinstance(step, int) and step > 0 else 0

    @property
    def done(self) -> bool:
        return self.state == "finished" and self.last_step >= self.plan.max_steps

    @property
    def resumes_from(self) -> int:
        """The step a launch of this job continues from: its last step while its checkpoint is
        there (on a fresh clone it is not, and the job trains from the start)."""
        if self.run is None or not (self.run.dir / CHECKPOINT_DIR / LAST_CHECKPOINT).exists():
            return 0
        return min(self.last_step, self.plan.max_steps)


@dataclass(frozen=True)
class Estimate:
    """The remaining jobs of one cost signature and what they will take (``rate`` None: no
    record measures the signature, it needs a pilot)."""

    signature: Signature
    jobs: tuple[JobState, ...]
    rate: Rate | None

    @property
    def steps(self) -> int:
        return sum(j.plan.max_steps - j.resumes_from for j in self.jobs)

    @property
    def seconds(self) -> float:
        if self.rate is None:
            return 0.0
        return sum(job_seconds(self.rate, j.plan, j.resumes_from) for j in self.jobs)


@dataclass(frozen=True)
class Overview:
    """A study as it stands: its jobs, the records in ``runs/`` that are no job of it, its
    pilots, and every measurement by cost signature."""

    study: Study
    jobs: tuple[JobState, ...]
    others: tuple[Run, ...]
    pilots: tuple[Run, ...]
    measurements: dict[Signature, list[Measurement]]

    def estimates(self, here: str | None) -> list[Estimate]:
        """The remaining jobs by cost signature, in the order they come in the study."""
        remaining: dict[Signature, list[JobState]] = {}
        for job in self.jobs:
            if not job.done:
                remaining.setdefault(job.plan.signature, []).append(job)
        return [
            Estimate(signature, tuple(jobs), combine(self.measurements.get(signature, []), here))
            for signature, jobs in remaining.items()
        ]


def _records(folder: Path) -> dict[str, Run]:
    """The run records of the folders directly below ``folder``, by folder name."""
    if not folder.is_dir():
        return {}
    return {path.parent.name: read_run(path) for path in sorted(folder.glob(f"*/{RESULTS_FILE}"))}


def overview(study: Study) -> Overview:
    """Where ``study`` stands (StudyPlanError for commands that cannot be expanded)."""
    jobs = expand(study.commands)
    plans = plan_jobs(jobs)
    records = _records(study.runs)
    states = tuple(
        JobState(name, job, plans[job.overrides], records.get(name))
        for job in jobs
        for name in [job_name(job.overrides)]
    )
    names = {state.name for state in states}
    others = tuple(run for name, run in records.items() if name not in names)
    pilots = tuple(_records(study.folder / PILOT_DIR).values())
    measurements: dict[Signature, list[Measurement]] = {}
    for run in (*records.values(), *pilots):
        config = run.results.get("config")
        if run.problem is None and isinstance(config, dict):
            found = measure(run.dir, run.results)
            if found is not None:
                measurements.setdefault(cost_signature(config), []).append(found)
    return Overview(study, states, others, pilots, measurements)


# ---------------------------------------------------------------------------- status
def _duration(seconds: float) -> str:
    for size, unit in ((3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _step_cell(job: JobState) -> str:
    if job.run is None:
        return f"- of {job.plan.max_steps}"
    return f"{job.last_step} of {job.plan.max_steps}"


def job_lines(view: Overview) -> list[str]:
    """Every job: its name, state and the step it reached; then the counts."""
    width = max([len("job"), *(len(job.name) for job in view.jobs)])
    states = max([len("state"), *(len(job.state) for job in view.jobs)])
    lines = [f"  {'job':<{width}}  {'state':<{states}}  step"]
    lines += [f"  {j.name:<{width}}  {j.state:<{states}}  {_step_cell(j)}" for j in view.jobs]
    counts: dict[str, int] = {}
    for job in view.jobs:
        counts[job.state] = counts.get(job.state, 0) + 1
    order = ("finished", "running", "killed", "interrupted", "failed", "diverged", "unreadable")
    ordered = sorted(counts, key=lambda s: order.index(s) if s in order else len(order))
    lines.append("jobs: " + ", ".join(f"{counts[state]} {state}" for state in ordered))
    if view.others:
        lines.append(
            f"  {_plural(len(view.others), 'folder')} in {view.study.runs} match no job of the "
            f"study's commands (counted in the ledger, not in the jobs): "
            + ", ".join(run.dir.name for run in view.others[:5])
            + (", ..." if len(view.others) > 5 else "")
        )
    return lines


def _rests_on(rate: Rate) -> str:
    where = ", ".join(rate.machines)
    other = "" if rate.here else " (not this machine: its speed may differ)"
    rough = "; rough: wall time over steps, no per-step timings" if rate.rough else ""
    return f"rests on {_plural(rate.n, 'measurement')} from {where}{other}{rough}"


def _signature_name(estimate: Estimate) -> str:
    first = estimate.jobs[0].name
    more = len(estimate.jobs) - 1
    return f"{first}" + (f" and {more} more like it" if more else "")


def estimate_lines(view: Overview, here: str | None, threads: int) -> list[str]:
    """The estimate of the remaining jobs, signature by signature, and in all."""
    estimates = view.estimates(here)
    if not estimates:
        return ["remaining: nothing, every job finished"]
    remaining = sum(len(e.jobs) for e in estimates)
    lines = [
        f"remaining: {_plural(remaining, 'job')} of {_plural(len(estimates), 'cost signature')}; "
        f"here: {here or 'an unknown machine'}"
    ]
    measured = [e for e in estimates if e.rate is not None]
    for e in measured:
        rate = e.rate
        assert rate is not None
        per = f"{rate.step_s:.3g} s/step"
        if not rate.rough:
            per += f", {rate.val_s:.3g} s a validation, {rate.overhead_s:.3g} s a launch"
        lines.append(
            f"  {_signature_name(e)}: {_plural(len(e.jobs), 'job')}, {e.steps} steps at {per}: "
            f"{_duration(e.seconds)}; {_rests_on(rate)}"
        )
    pilots = [e for e in estimates if e.rate is None]
    for e in pilots:
        lines.append(
            f"  needs a pilot: {_signature_name(e)} ({_plural(len(e.jobs), 'job')}): no record "
            "of its cost signature trained a step"
        )
    if measured:
        seconds = sum(e.seconds for e in measured)
        jobs = sum(len(e.jobs) for e in measured)
        rests = sum(e.rate.n for e in measured if e.rate is not None)
        lines.append(
            f"estimate for {jobs} of {remaining} remaining jobs: {hours(seconds / 3600)} "
            f"wall-hours ({_duration(seconds)}, one job at a time), "
            f"{hours(seconds * threads / 3600)} core-hours at {threads} "
            f"thread{'s' * (threads != 1)}; rests on {_plural(rests, 'measurement')}"
        )
    if pilots:
        jobs = sum(len(e.jobs) for e in pilots)
        lines.append(
            f"not estimated: {_plural(jobs, 'job')} of {_plural(len(pilots), 'cost signature')} "
            f"without a measurement; run `mixerlab study pilot {view.study.name}`"
        )
    lines.append(
        f"(a cost signature: the job's config less {', '.join(COST_FREE)}; see "
        "mixerlab.experiments.run.study_plan)"
    )
    return lines


def status_lines(view: Overview, here: str | None, threads: int) -> list[str]:
    """What ``mixerlab study status`` prints."""
    study = view.study
    multiruns = sum(c.multirun for c in study.commands)
    lines = [
        f"study {study.name}: {study.folder}, {_plural(len(view.jobs), 'job')} from "
        f"{_plural(len(study.commands), 'command')} ({multiruns} multirun)",
        *job_lines(view),
    ]
    spent = ledger_lines(runs_spent([j.run for j in view.jobs if j.run] + list(view.others)))
    lines += [f"spent: {spent[0]}", *(f"  {line}" for line in spent[1:])] if spent else []
    if not spent:
        lines.append("spent: nothing yet")
    if pilot_spent := ledger_lines(runs_spent(view.pilots)):
        lines += [f"pilots spent: {pilot_spent[0]}"]
    return [*lines, *estimate_lines(view, here, threads)]


# ---------------------------------------------------------------------------- pilot
def pilot_overrides(job: Job, steps: int, max_steps: int) -> list[str]:
    """A pilot's overrides: the job's own, less how and where it launches and what the pilot
    sets itself (its length, the logger, the progress bar)."""
    replaced = ("trainer.max_steps", "logger", "callbacks.progress_bar", *LAUNCH_KEYS)
    kept = [o for o in job.overrides if not sets(o, replaced)]
    return [*kept, f"trainer.max_steps={min(steps, max_steps)}", *PILOT_SETTINGS]


def run_pilot(overrides: list[str], folder: Path) -> str:
    """Train one pilot into ``folder``; its record's status (or the error that stopped it)."""
    from hydra import compose, initialize_config_module

    from mixerlab.experiments.run.schema import ConfigError
    from mixerlab.experiments.run.train import train

    with initialize_config_module(config_module="mixerlab.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    try:
        train(cfg, folder)
    except ConfigError as err:
        return f"config error: {err}"
    except Exception as err:  # the pilot failed; the next one still runs
        return f"failed: {type(err).__name__}: {err}"
    return str(read_run(folder / RESULTS_FILE).status)


def pilot(view: Overview, steps: int, here: str | None) -> int:
    """A short run of one remaining job of each cost signature no record measures."""
    todo = [e.jobs[0] for e in view.estimates(here) if e.rate is None]
    if not todo:
        print(f"study {view.study.name}: every remaining job's cost signature is measured")
        return 0
    failed = 0
    for index, job in enumerate(todo, 1):
        folder = view.study.folder / PILOT_DIR / job.name
        overrides = pilot_overrides(job.job, steps, job.plan.max_steps)
        print(f"pilot {index}/{len(todo)}: {job.name}: {steps} steps into {folder}", flush=True)
        started = time.perf_counter()
        outcome = run_pilot(overrides, folder)
        failed += outcome != "finished"
        print(f"  {outcome} in {time.perf_counter() - started:.0f} s", flush=True)
    print(f"next: mixerlab study status {view.study.name}")
    return 1 if failed else 0


# ---------------------------------------------------------------------------- command line
def _here(threads: int | None) -> tuple[str | None, int]:
    """This machine as measurements name it, and the threads the estimate counts."""
    import torch

    from mixerlab.lightning_modules.callbacks.run_record import cpu_model

    count = threads or torch.get_num_threads()
    return machine_label(cpu_model(), count), count


def _positive(text: str) -> int:
    """A count given on the command line: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixerlab study", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = commands.add_parser(
        "status", help="the jobs, the compute spent and an estimate for the rest"
    )
    status.add_argument("study", help="a study's name (under studies/) or folder")
    status.add_argument(
        "--threads",
        type=_positive,
        metavar="N",
        help="the threads the remaining jobs will train with (default: torch's, here)",
    )
    run = commands.add_parser("pilot", help="a short run of each cost signature not measured")
    run.add_argument("study", help="a study's name (under studies/) or folder")
    run.add_argument(
        "--steps",
        type=_positive,
        default=DEFAULT_PILOT_STEPS,
        metavar="N",
        help=f"steps of each pilot (default: {DEFAULT_PILOT_STEPS})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        view = overview(read_study(args.study))
    except (StudyError, StudyPlanError) as err:
        print(f"mixerlab study: error: {err}", file=sys.stderr)
        return 2
    here, threads = _here(getattr(args, "threads", None))
    if args.action == "pilot":
        return pilot(view, args.steps, here)
    for line in status_lines(view, here, threads):
        print(line)
    return 0
