"""A run folder belongs to the config it was made with: another config is
refused with the differing keys named, ``overwrite=true`` starts afresh, a run that finished with
the same config is skipped, an interrupted one resumes, and a larger budget trains further."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from configs import TINY, compose_config, run_config

from mixerlab.experiments.run_guard import Start, check_budget, start_checkpoint
from mixerlab.experiments.run_identity import ABSENT, check_run_dir, differences, discard_run
from mixerlab.experiments.schema import ConfigError
from mixerlab.experiments.train import main, train
from mixerlab.experiments.train_cli import expand_resume
from mixerlab.lightning_modules.io import load_checkpoint

RUN = [*TINY, "logger=none"]


def write_record(run_dir: Path, *overrides: str, status: str = "running") -> dict:
    """A results.json as a run of these overrides leaves it."""
    record = {"status": status, "last_step": 2, "best": {}, "config": run_config(*overrides)}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(record))
    return record


def results_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


# ------------------------------------------------------------------------ what is compared
def test_differences_name_each_key_with_both_values() -> None:
    old = {"optim": {"lr": 0.1, "betas": [0.9, 0.95]}, "logger": {"mode": "offline"}, "a": 1}
    new = {"optim": {"lr": 0.2, "betas": [0.9, 0.99]}, "logger": {}, "b": {}}
    assert differences(old, new) == [
        ("a", 1, ABSENT),
        ("b", ABSENT, {}),
        ("optim.betas", [0.9, 0.95], [0.9, 0.99]),  # a list is one value
        ("optim.lr", 0.1, 0.2),
    ]  # the logger is not part of a run's identity
    assert differences(old, old) == []


def test_a_folder_of_another_config_is_refused_naming_the_keys_and_the_fix(
    tmp_path: Path,
) -> None:
    write_record(tmp_path, *RUN)
    with pytest.raises(ConfigError) as info:
        check_run_dir(compose_config(*RUN, "optim.lr=0.01", "model.d_model=48"), tmp_path)
    message = str(info.value)
    assert "holds a run (running, step 2) of another config; 3 keys differ" in message
    assert "  - model.d_model: 32 there, 48 now" in message
    assert "  - optim.lr: 0.003 there, 0.01 now" in message
    assert "  - optim.optimizer.lr: 0.003 there, 0.01 now" in message  # follows optim.lr
    assert "overwrite=true" in message and "hydra.run.dir" in message
    with pytest.raises(ConfigError, match=r"mixer\.name: 'attention' there, 'gmlp' now"):
        check_run_dir(compose_config(*RUN, "mixer=gmlp"), tmp_path)


def test_the_budget_and_what_only_shows_the_run_may_change(tmp_path: Path) -> None:
    record = write_record(tmp_path, *RUN)
    # the LR schedule's length follows trainer.max_steps: it is part of the budget
    longer = compose_config(*RUN, "trainer.max_steps=8")
    assert check_run_dir(longer, tmp_path) == record
    shown = compose_config(*TINY, "logger=csv", "callbacks.progress_bar=true", "cache_dir=/x")
    assert check_run_dir(shown, tmp_path) == record
    assert check_run_dir(compose_config(*RUN, "overwrite=true", "seed=3"), tmp_path) is None
    assert check_run_dir(compose_config(*RUN), tmp_path / "new") is None


def test_a_folder_whose_config_is_unknown_is_refused(tmp_path: Path) -> None:
    cfg = compose_config(*RUN)
    (tmp_path / "results.json").write_text('{"status": "runn')
    with pytest.raises(ConfigError, match=r"config is unknown: .*results\.json cannot be read"):
        check_run_dir(cfg, tmp_path)
    (tmp_path / "results.json").write_text('{"status": "finished"}')
    with pytest.raises(ConfigError, match=r"results\.json records no config.*overwrite=true"):
        check_run_dir(cfg, tmp_path)
    (tmp_path / "results.json").unlink()
    (tmp_path / "checkpoints").mkdir()
    assert check_run_dir(cfg, tmp_path) is None  # an empty folder holds no run
    torch.save({"state_dict": {}, "global_step": 1}, tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match=r"holds checkpoints but no results\.json"):
        check_run_dir(cfg, tmp_path)


def test_overwrite_discards_only_what_a_run_wrote(tmp_path: Path) -> None:
    ours = ["results.json", "metrics.csv", "checkpoints/last.ckpt", "checkpoints/best.ckpt"]
    theirs = [".hydra/config.yaml", "train.log", "wandb/run-1/x", "notes.txt", "checkpoints/a.txt"]
    for name in ours + theirs:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    with pytest.raises(ConfigError, match=r"best\.ckpt is one of the checkpoints overwrite"):
        discard_run(tmp_path, str(tmp_path / "checkpoints" / "best.ckpt"))
    assert all((tmp_path / name).exists() for name in ours)  # refused: nothing removed
    removed = discard_run(tmp_path, "elsewhere.ckpt")
    assert sorted(removed) == sorted(tmp_path / name for name in ours)
    assert all((tmp_path / name).exists() for name in theirs)
    (tmp_path / "checkpoints" / "a.txt").unlink()
    (tmp_path / "checkpoints" / "last.ckpt").write_text("x")
    discard_run(tmp_path)
    assert not (tmp_path / "checkpoints").exists()  # left empty: removed


def test_resuming_repeats_a_runs_overrides_but_not_overwrite(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()
    saved = ["mixer=gmlp", "overwrite=true"]
    (tmp_path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(saved))
    run_dir = f"hydra.run.dir={tmp_path.resolve()}"
    assert expand_resume([f"resume={tmp_path}"]) == ["mixer=gmlp", run_dir]
    given = expand_resume([f"resume={tmp_path}", "overwrite=true"])
    assert given == ["mixer=gmlp", "overwrite=true", run_dir]  # asked for again: kept


def test_a_checkpoint_past_the_budget_is_refused(tmp_path: Path) -> None:
    config = run_config(*RUN)  # trainer.max_steps=4
    check_budget(Start("x.ckpt", {"state_dict": {}, "global_step": 4}), config)
    with pytest.raises(ConfigError, match=r"max_steps=4, but checkpoint x\.ckpt has already"):
        check_budget(Start("x.ckpt", {"state_dict": {}, "global_step": 6}), config)


def test_a_run_folder_resumes_from_its_own_checkpoint_not_ckpt_path(tmp_path: Path) -> None:
    given = tmp_path / "given.ckpt"
    torch.save({"state_dict": {}, "global_step": 1}, given)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    own = tmp_path / "run" / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {}, "global_step": 3}, own)
    with start_checkpoint({"ckpt_path": str(given)}, tmp_path / "run") as start:
        assert start.path == str(own)  # ckpt_path says where the run began, at its first launch
    with start_checkpoint({"ckpt_path": str(given)}, tmp_path / "new") as start:
        assert start.path == str(given)


def test_a_refused_command_leaves_the_run_folder_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    write_record(run_dir, *RUN)
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(RUN))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert main([*RUN, "seed=1", f"hydra.run.dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert "mixerlab train: run folder" in err and "  - seed: 0 there, 1 now" in err
    assert "Traceback" not in err
    # .hydra/ still says how the run was made, so `resume=<dir>` repeats that
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


# --------------------------------------------------------------------- real runs, in-process
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
