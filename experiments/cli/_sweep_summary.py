"""What a multirun leaves a user with: where the sweep went, one line per job, what to run next.

Hydra calls :class:`SweepStart` when a multirun starts (``conf/hydra/default.yaml`` registers it),
which remembers the sweep folder and the metric the runs select on. ``mixerlab train`` prints
:func:`sweep_report` when Hydra returns, whether every job finished or some failed (Hydra skips
its own end-of-sweep callback when a job fails, which is when the summary matters most). A
study's sweep folder (``studies/<name>/runs``) holds every job of the study, from each of its
commands: its summary lists them all, the study's state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mixerlab.experiments.run.run_folder import remove_run_dir
from mixerlab.lightning_modules.record import RESULTS_FILE, read_results


@dataclass(frozen=True)
class Sweep:
    """A started multirun: its folder and the metric its runs are ranked on."""

    dir: Path
    metric: str
    study: str | None = None  # the study whose runs folder it is


STARTED: list[Sweep] = []  # the multiruns this process started, in order


class SweepStart(Callback):
    """Records each multirun's folder and selection metric as it starts."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        study = config.get("study")
        metric = str(config.callbacks.checkpoint.monitor)
        STARTED.append(Sweep(sweep_dir, metric, None if study is None else str(study)))


def _job_number(job_dir: Path) -> tuple[float, str]:
    """Sweep subfolders start with Hydra's job number: sort 2 before 10."""
    number = job_dir.name.split("_", 1)[0]
    return (int(number) if number.isdigit() else math.inf, job_dir.name)


def _overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else []


def _job_line(job_dir: Path, results: dict[str, Any] | None, metric: str, shown: str) -> str:
    if results is None:
        return f"  {job_dir.name:<28} no {RESULTS_FILE} (killed before its first step?)"
    value = (results.get("best") or {}).get(metric)
    best = f"{metric} {value:.4f}" if isinstance(value, float) and math.isfinite(value) else "-"
    line = f"  {job_dir.name:<28} {results.get('status', '?'):<11} best {best:<22}"
    line += f" {results.get('wall_s') or 0:>6.0f} s  {shown}"
    if results.get("error"):
        line += f"\n  {'':<28} {str(results['error']).splitlines()[0][:120]}"
    return line


def sweep_report(sweep: Sweep) -> str:
    """The sweep folder, one line per job (status, best metric, wall time, overrides) and the
    ``mixerlab compare`` command that tabulates it. A sweep that ran no job (its command line
    was wrong, and said so) leaves no folder and no report."""
    jobs = sorted((p for p in sweep.dir.glob("*") if (p / ".hydra").is_dir()), key=_job_number)
    if not jobs:
        if sweep.dir.is_dir() and {p.name for p in sweep.dir.iterdir()} <= {"multirun.yaml"}:
            remove_run_dir(sweep.dir)
        return ""
    results = {}
    for job in jobs:
        results[job] = read_results(job)
    overrides = {job: _overrides(job) for job in jobs}
    # Hydra numbers jobs 0, 1, ...: a number without a folder is a job its config check removed
    numbers = {int(n) for n, _ in map(_job_number, jobs) if n != math.inf}
    missing = sorted(set(range(max(numbers, default=-1) + 1)) - numbers)
    shared = set.intersection(*(set(o) for o in overrides.values())) if not missing else set()
    what = f"study {sweep.study}:" if sweep.study else "sweep of"
    lines = [f"mixerlab: {what} {len(jobs) + len(missing)} job(s) in {sweep.dir}"]
    if shared:
        lines.append(f"  every job: {' '.join(o for o in overrides[jobs[0]] if o in shared)}")
    gone = "no folder: its config was invalid (error above) or it was removed"
    rows = [(n, f"  job {n:<24} {gone}") for n in missing]
    for job in jobs:
        own = " ".join(o for o in overrides[job] if o not in shared)
        rows.append((_job_number(job)[0], _job_line(job, results[job], sweep.metric, own)))
    lines += [line for _, line in sorted(rows, key=lambda row: row[0])]
    per_set = any(
        key.startswith("val/acc@") for r in results.values() if r for key in r.get("metrics", {})
    )
    also = " --also 'val/acc@*'" if per_set else ""
    compared = sweep.dir.parent if sweep.study else sweep.dir  # a study's comparison is its own
    lines.append(f"  next: mixerlab compare {compared} --metric {sweep.metric}{also}")
    return "\n".join(lines)


def report_started_sweeps() -> None:
    """Print the summary of every multirun started since the last call, then forget them."""
    while STARTED:
        if report := sweep_report(STARTED.pop(0)):
            print(report)
