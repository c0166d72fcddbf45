"""``mixerlab study``: a study's jobs matched to their folders, the compute spent, an estimate of
the rest from records of the same cost signature, and pilots for the signatures none measures."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from configs import TINY, run_config

from mixerlab.experiments.cli.study import main, pilot_overrides
from mixerlab.experiments.compare.runs import load_runs
from mixerlab.experiments.run.study import Command
from mixerlab.experiments.run.study_plan import (
    COST_FREE,
    Job,
    JobPlan,
    Rate,
    cost_signature,
    expand,
    job_seconds,
    measure,
    validations,
)

SMOKE = ("experiment=smoke",)  # 40 steps, a validation every 20


def write_study(folder: Path, *commands: dict[str, Any]) -> Path:
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text(yaml.safe_dump({"name": folder.name, "commands": commands}))
    return folder


def rows(steps: int, *, start: float = 2.0, step: float = 0.5, val: float = 1.0) -> list[tuple]:
    """metrics.csv rows as a run logs them (every 10 steps, a validation every 20, at each
    step's index): ``start`` s before the first step, ``step`` s a step, ``val`` s a validation."""
    found, wall = [(0, start, False)], start
    for done in range(1, steps + 1):
        wall += step
        if done % 10 == 0:
            found.append((done - 1, wall, False))
        if done % 20 == 0:
            wall += val
            found.append((done - 1, wall, True))
    return found


def write_record(
    run: Path, overrides: tuple[str, ...], status: str, steps: int, checkpoint: bool = False
) -> None:
    """A run folder of the job with these overrides, trained ``steps`` steps on 2 threads."""
    run.mkdir(parents=True)
    logged = rows(steps)
    with (run / "metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "wall_s", "params", "train/loss", "val/loss"])
        writer.writerow([0, logged[0][1], 1.0, "", ""])  # the parameter count, before any step
        for step, wall, is_val in logged[1:]:
            writer.writerow([step, wall, "", "" if is_val else 3.0, 3.0 if is_val else ""])
    wall_s = logged[-1][1] + 0.5  # half a second after the last row: the last checkpoint
    machine = {"cpu": "Test CPU", "cores": 8, "accelerator": "cpu", "platform": "x", "torch": "2"}
    launch = {
        "host": "h", "machine": machine, "threads": 2, "devices": 1, "wall_s": wall_s,
        "from_step": 0, "to_step": steps, "started_at": None,
    }  # fmt: skip
    config = run_config(*overrides)
    record = {
        "status": status, "mixer": config["mixer"]["name"], "task": "text", "seed": config["seed"],
        "params": 1, "flops_per_token": 1.0, "metrics": {}, "best": {}, "tokens_per_s": 1.0,
        "wall_s": wall_s, "wandb_run_id": None, "checkpoints": {}, "config": config,
        "error": None, "last_step": steps, "compute": [launch],
    }  # fmt: skip
    (run / "results.json").write_text(json.dumps(record))
    if checkpoint:
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.ckpt").write_bytes(b"")


def test_jobs_expand_as_hydra_sweeps_them() -> None:
    jobs = expand(
        [
            Command(("sweep=lr_grid", "mixer=rnn", "seed=0"), multirun=True),
            Command(("mixer=attention", "optim.lr=1.0e-3")),
        ]
    )
    swept = [job.overrides for job in jobs if job.multirun]
    assert len(swept) == 4  # the preset's 4 learning rates; seed=0 on the command line wins
    assert swept[0] == ("optim.lr=0.0003", "seed=0", "sweep=lr_grid", "mixer=rnn")
    assert jobs[-1] == Job(("mixer=attention", "optim.lr=1.0e-3"), multirun=False)  # as typed


def test_seeds_and_learning_rates_share_a_cost_signature_and_widths_do_not() -> None:
    base = cost_signature(run_config(*SMOKE, "seed=0", "optim.lr=0.01", "trainer.max_steps=9"))
    assert base == cost_signature(run_config(*SMOKE, "seed=3", "logger=csv", "name=x"))
    assert base != cost_signature(run_config(*SMOKE, "model.d_model=64"))
    assert not any(key.startswith(("seed", "optim.", "trainer.max_steps")) for key, _ in base)
    assert {"seed", "optim", "trainer.max_steps"} <= set(COST_FREE)


def test_a_job_needs_its_steps_validations_and_one_launch(tmp_path: Path) -> None:
    write_record(tmp_path / "run", SMOKE, "finished", 40)
    measured = measure(tmp_path / "run", json.loads((tmp_path / "run/results.json").read_text()))
    assert measured is not None and measured.steps == 40
    assert (measured.step_s, measured.val_s, measured.overhead_s) == pytest.approx((0.5, 1, 2.5))
    assert validations(0, 40, 20) == 2 and validations(10, 45, 20) == 3  # 20, 40 and the end
    rate = Rate(0.5, 1.0, 2.5, n=1, machines=("m",), rough=False, here=True)
    assert job_seconds(rate, JobPlan((), 40, 20), done_step=10) == 2.5 + 30 * 0.5 + 2 * 1.0


def test_status_counts_the_jobs_and_estimates_the_rest_from_their_signature(
    tmp_path: Path, capsys
) -> None:
    """attention seed 0 finished, seed 1 interrupted at step 10 (its checkpoint kept), rnn never
    ran: attention's remaining 30 steps are estimated from the two attention records (0.5 s a
    step, 1 s a validation, 2.5 s a launch), rnn's jobs need a pilot."""
    study = write_study(
        tmp_path / "studies" / "demo",
        {"overrides": [*SMOKE, "mixer=attention,rnn", "seed=0,1"], "multirun": True},
    )
    write_record(study / "runs" / "mixer=attention,seed=0", SMOKE, "finished", 40)
    write_record(
        study / "runs" / "mixer=attention,seed=1", (*SMOKE, "seed=1"), "interrupted", 10, True
    )
    assert main(["status", str(study), "--threads", "4"]) == 0
    out = capsys.readouterr().out
    assert "4 jobs from 1 command" in out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if "=" in line[:12]}
    assert lines["mixer=attention,seed=0"] == ["finished", "40", "of", "40"]
    assert lines["mixer=attention,seed=1"] == ["interrupted", "10", "of", "40"]
    assert lines["mixer=rnn,seed=0"] == ["not", "started", "-", "of", "40"]
    assert "jobs: 1 finished, 1 interrupted, 2 not started" in out
    # 24.5 + 7.5 wall seconds on 2 threads
    assert "spent: 2 runs: 0.00889 wall-hours, 0.0178 core-hours" in out
    assert "Test CPU x 2 threads: 2 launches" in out
    # 2.5 s a launch + 30 steps x 0.5 s + 2 validations x 1 s = 19.5 s, at 4 threads
    assert "mixer=attention,seed=1: 1 job, 30 steps at 0.5 s/step, 1 s a validation" in out
    assert "rests on 2 measurements from Test CPU x 2 threads (not this machine" in out
    assert "estimate for 1 of 3 remaining jobs: 0.00542 wall-hours (19.5 s" in out
    assert "0.0217 core-hours at 4 threads; rests on 2 measurements" in out
    assert "needs a pilot: mixer=rnn,seed=0 and 1 more like it (2 jobs)" in out
    assert "run `mixerlab study pilot demo`" in out


def test_a_pilot_trains_its_job_briefly_without_w_and_b_or_the_study_folder() -> None:
    job = Job(
        ("sweep=lr_grid", "mixer=rnn", "logger=wandb", "study=x", "trainer.max_steps=500",
         "hydra.run.dir=a", "+logger.tags=[a]", "seed=1"),
        multirun=True,
    )  # fmt: skip
    assert pilot_overrides(job, 20, 500) == [
        "mixer=rnn", "seed=1", "trainer.max_steps=20", "logger=csv", "callbacks.progress_bar=false"
    ]  # fmt: skip
    assert pilot_overrides(job, 20, 8)[2] == "trainer.max_steps=8"  # never beyond the job


def test_comparing_a_study_leaves_its_pilots_out(tmp_path: Path) -> None:
    study = write_study(tmp_path / "demo", {"overrides": list(SMOKE), "multirun": False})
    write_record(study / "runs" / "default", SMOKE, "finished", 40)
    write_record(study / "pilot" / "default", SMOKE, "finished", 20)
    assert [run.dir.parent.name for run in load_runs([study])] == ["runs"]
    assert [run.dir.parent.name for run in load_runs([study / "pilot"])] == ["pilot"]


def test_a_study_that_cannot_be_read_is_one_message(tmp_path: Path, capsys) -> None:
    assert main(["status", str(tmp_path / "nowhere" / "x")]) == 2
    assert "mixerlab study: error: no study in" in capsys.readouterr().err
    write_study(tmp_path / "opt", {"overrides": ["sweep=optuna"], "multirun": True})
    assert main(["status", str(tmp_path / "opt")]) == 2
    assert "a study's jobs are a grid" in capsys.readouterr().err


@pytest.mark.slow  # about 9 s: one tiny training run
def test_a_pilot_measures_an_unmeasured_signature_and_status_uses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("MIXERLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    study = write_study(tmp_path / "tiny", {"overrides": [*TINY, "mixer=rnn"], "multirun": False})
    assert main(["pilot", str(study), "--steps", "3"]) == 0
    (pilot,) = (study / "pilot").iterdir()
    record = json.loads((pilot / "results.json").read_text())
    assert record["status"] == "finished" and record["last_step"] == 3
    (launch,) = record["compute"]
    assert (launch["from_step"], launch["to_step"], launch["threads"]) == (0, 3, 1)
    assert main(["pilot", str(study)]) == 0  # measured now: nothing to do
    assert "every remaining job's cost signature is measured" in capsys.readouterr().out
    assert main(["status", str(study), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "pilots spent: 1 run" in out and "needs a pilot" not in out
    assert "estimate for 1 of 1 remaining jobs" in out and "rests on 1 measurement" in out
