"""Sweeps through Hydra's submitit launcher, run for real with submitit's local executor (the
pickling, job-folder and requeue path its SLURM executor takes): a 2-job sweep ends with its
summary and compares, and a job sent submitit's preemption signal saves its run, is requeued and
resumes it to the uninterrupted run's end."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from cli_runs import mixerlab
from configs import TINY

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

# Sent to its own process after optimiser step 3, as submitit's local executor delivers a
# preemption (LocalJob._interrupt); not again once the requeued job resumed.
HELPER = """
import os, signal
import pytorch_lightning as pl

class PreemptAt(pl.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step and trainer.ckpt_path is None:
            os.kill(os.getpid(), signal.SIGUSR2)
"""
RUN = [*TINY, "logger=csv", "trainer.max_steps=6", "trainer.val_check_interval=2"]


def run(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``mixerlab <argv>`` in ``tmp_path``, importing its helper from there; it must succeed."""
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "MIXERLAB_CACHE": str(tmp_path / "cache")}
    env |= {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    done = mixerlab(env, tmp_path, *argv)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


@pytest.mark.slow
def test_a_preempted_job_of_a_submitit_sweep_is_requeued_and_resumes_its_run(
    tmp_path: Path,
) -> None:
    (tmp_path / "preempt.py").write_text(HELPER)
    sweep = tmp_path / "sweep"
    preempt = "callbacks.extra=[{_target_:preempt.PreemptAt,step:3}]"
    launched = run(
        tmp_path, "train", "-m", *RUN, "seed=0,1", preempt, "launcher=submitit_local",
        f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert "sweep of 2 job(s)" in launched.stdout and launched.stdout.count(" finished ") == 2
    assert (sweep / ".submitit").is_dir()  # the jobs went through submitit
    jobs = sorted(p for p in sweep.iterdir() if (p / "results.json").exists())
    assert len(jobs) == 2
    for job in jobs:
        results = json.loads((job / "results.json").read_text())
        assert results["status"] == "finished" and results["last_step"] == 6
        segments = [(s["from_step"], s["to_step"]) for s in results["compute"]]
        assert segments == [(0, 3), (3, 6)], segments  # saved at the signal, resumed there
    straight = tmp_path / "straight"
    run(tmp_path, "train", *RUN, "seed=0", f"hydra.run.dir={straight}")
    seed_0 = next(job for job in jobs if job.name.startswith("0_"))
    uninterrupted, resumed = weights(straight), weights(seed_0)
    for name, value in uninterrupted.items():
        assert torch.equal(resumed[name], value), name
    compared = run(tmp_path, "compare", str(sweep), "--metric", "val/loss")
    assert "2 runs" in compared.stdout or "val/loss" in compared.stdout
