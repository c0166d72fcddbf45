"""A run folder belongs to the config it was made with, with real runs: a run that finished with
the same config is skipped, another config is refused, ``overwrite=true`` starts afresh, an
interrupted run resumes, a larger budget trains further, and a re-run sweep does all of it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
from configs import TINY, compose_config

from mixerlab.experiments.run.run_folder import check_run_dir
from mixerlab.experiments.run.schema import ConfigError
from mixerlab.experiments.run.train import train
from mixerlab.lightning_modules.checkpoints import load_checkpoint

RUN = [*TINY, "logger=none"]


def results_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXERLAB_CACHE", str(tmp_path_factory.getbasetemp() / "identity-cache"))


@pytest.mark.slow
def test_a_run_folder_keeps_its_config(
    cache: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    run_dir = tmp_path / "run"
    best = train(compose_config(*RUN), run_dir)
    finished = (run_dir / "results.json").read_bytes()
    assert json.loads(finished)["best"]["val/loss"] == best
    # the same config again (shown otherwise): nothing to train, the run's value for Optuna
    assert train(compose_config(*RUN, "callbacks.progress_bar=true"), run_dir) == best
    assert f"{run_dir} already finished, skipped (best val/loss {best:.4f})" in caplog.text
    assert (run_dir / "results.json").read_bytes() == finished

    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.003 there, 0\.01 now"):
        train(compose_config(*RUN, "optim.lr=0.01"), run_dir)
    assert (run_dir / "results.json").read_bytes() == finished

    train(compose_config(*RUN, "trainer.max_steps=6"), run_dir)  # train it further
    assert "another budget: trainer.max_steps 4 -> 6; not the same" in caplog.text
    assert "(whose optim.scheduler.lr_lambda.total_steps would have been" in caplog.text
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in caplog.text
    longer = results_of(run_dir)
    assert longer["status"] == "finished" and longer["last_step"] == 6
    assert longer["config"]["trainer"]["max_steps"] == 6
    with pytest.raises(ConfigError, match="has already trained 6 steps"):
        train(compose_config(*RUN), run_dir)  # a budget below what was trained

    train(compose_config(*RUN, "optim.lr=0.01", "overwrite=true"), run_dir)
    fresh = results_of(run_dir)
    assert fresh["status"] == "finished" and fresh["last_step"] == 4
    assert fresh["config"]["optim"]["lr"] == 0.01
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert check_run_dir(compose_config(*RUN, "optim.lr=0.01"), run_dir) is not None


class InterruptAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def test_an_interrupted_run_resumes_into_its_folder(
    cache: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(compose_config(*RUN), run_dir, callbacks=[InterruptAt(3)])
    assert results_of(run_dir)["status"] == "interrupted"
    train(compose_config(*RUN), run_dir)
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in caplog.text
    assert results_of(run_dir)["status"] == "finished" and results_of(run_dir)["last_step"] == 4


# ---------------------------------------------------------------------- a sweep, run again
SWEEP_HELPER = """
import pytorch_lightning as pl

class InterruptJob(pl.Callback):
    def __init__(self, step, seed, when_seed):
        self.step, self.fire = step, seed == when_seed

    def on_train_batch_end(self, trainer, *args):
        if self.fire and trainer.global_step == self.step:
            raise KeyboardInterrupt
"""


@pytest.mark.slow
def test_a_rerun_sweep_skips_finished_jobs_and_resumes_interrupted_ones(tmp_path: Path) -> None:
    (tmp_path / "sweep_helper.py").write_text(SWEEP_HELPER)
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "MIXERLAB_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    interrupt = (
        "callbacks.extra=[{_target_:sweep_helper.InterruptJob,step:3,seed:${seed},when_seed:1}]"
    )
    sweep = tmp_path / "sweep"
    command = ["train", "-m", "seed=0,1", *RUN, interrupt, f"hydra.sweep.dir={sweep}"]

    def mixerlab(*extra: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "mixerlab.experiments.cli", *command, *extra]
        return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)

    first = mixerlab()
    assert first.returncode == 130, first.stderr[-3000:]  # Ctrl-C in job 1 stops the sweep
    jobs = [sweep / "0_attention_text", sweep / "1_attention_text"]
    assert [results_of(job)["status"] for job in jobs] == ["finished", "interrupted"]
    done = (jobs[0] / "results.json").read_bytes()

    again = mixerlab()
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{jobs[0]} already finished, skipped" in again.stderr
    assert f"resuming from {jobs[1] / 'checkpoints' / 'last.ckpt'}" in again.stderr
    assert (jobs[0] / "results.json").read_bytes() == done
    assert results_of(jobs[1])["status"] == "finished" and results_of(jobs[1])["last_step"] == 4

    changed = mixerlab("optim.lr=0.01")
    assert changed.returncode == 1, changed.stderr[-3000:]
    assert changed.stderr.count("optim.lr: 0.003 there, 0.01 now") == 2
    assert "Traceback" not in changed.stderr
    assert (jobs[0] / "results.json").read_bytes() == done
