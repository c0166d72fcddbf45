"""Faults injected into runs: booby-trapped and damaged checkpoints, non-finite
values, bad command lines, signals and hard kills. Each test names the promise it holds the
code to; the ones that train real runs in subprocesses are marked slow."""

from __future__ import annotations

import http.server
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from configs import TINY, compose_config, run_config
from omegaconf import DictConfig, OmegaConf

from mixerlab.experiments.cli.train import main
from mixerlab.experiments.run.build import check_model_memory
from mixerlab.experiments.run.schema import ConfigError, validate_config
from mixerlab.experiments.run.start_checkpoint import (
    Start,
    check_checkpoint_fits,
    start_checkpoint,
)
from mixerlab.lightning_modules.callbacks import Diverged, StopOnDivergence
from mixerlab.lightning_modules.checkpoints import (
    CheckpointError,
    SafeCheckpointIO,
    load_checkpoint,
)


class Trap:
    """Unpickling this creates ``marker``: a stand-in for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def write_trap(path: Path, marker: Path, *, zipped: bool) -> Path:
    """A checkpoint-looking file whose unpickling runs code: torch's zip format or raw pickle."""
    payload = {"state_dict": {}, "global_step": 1, "trap": Trap(marker)}
    if zipped:
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path


def fake_checkpoint(path: Path, step: int, **weights: torch.Tensor) -> Path:
    torch.save({"state_dict": weights, "global_step": step}, path)
    return path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """A local HTTP server over ``tmp_path/www``; yields its base URL."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


# -------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("zipped", [True, False])
def test_a_booby_trapped_checkpoint_is_refused_unrun(tmp_path: Path, zipped: bool) -> None:
    marker = tmp_path / "pwned"
    trap = write_trap(tmp_path / "trap.ckpt", marker, zipped=zipped)
    with pytest.raises(CheckpointError, match=r"trap\.ckpt: refused: not a file of tensors"):
        load_checkpoint(trap)
    assert not marker.exists()


def test_a_checkpoint_url_is_loaded_as_safely_as_a_file(tmp_path: Path, served: str) -> None:
    marker = tmp_path / "pwned"
    write_trap(tmp_path / "www" / "trap.ckpt", marker, zipped=True)
    fake_checkpoint(tmp_path / "www" / "good.ckpt", 7, w=torch.ones(2))
    config = {"ckpt_path": f"{served}/trap.ckpt"}
    with (
        pytest.raises(ConfigError, match=r"ckpt_path: http://.*/trap\.ckpt: refused"),
        start_checkpoint(config, tmp_path / "run"),
    ):
        pass
    assert not marker.exists()
    with start_checkpoint({"ckpt_path": f"{served}/good.ckpt"}, tmp_path / "run") as start:
        assert start.checkpoint["global_step"] == 7 and Path(start.path).is_file()
        assert start.source == f"{served}/good.ckpt"
    assert not Path(start.path).exists()  # the download lived as long as the run needed it
    with (
        pytest.raises(ConfigError, match=r"missing\.ckpt: cannot be downloaded"),
        start_checkpoint({"ckpt_path": f"{served}/missing.ckpt"}, tmp_path / "run"),
    ):
        pass


def test_files_that_are_not_checkpoints_get_one_clear_error(tmp_path: Path) -> None:
    good = fake_checkpoint(tmp_path / "good.ckpt", 3, w=torch.ones(4))
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:-100])
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    plain = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(2)}, plain)
    with pytest.raises(CheckpointError, match=r"truncated\.ckpt: not a readable checkpoint"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match=r"notes\.ckpt: refused: .*Unsupported operand"):
        load_checkpoint(text)
    with pytest.raises(CheckpointError, match=r"not a Lightning checkpoint \(no state_dict"):
        load_checkpoint(plain)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "absent.ckpt")
    assert load_checkpoint(good)["global_step"] == 3


def test_a_damaged_last_checkpoint_falls_back_to_the_newest_good_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    older = fake_checkpoint(ckpts / "older.ckpt", 2)
    best = fake_checkpoint(ckpts / "best.ckpt", 4)
    last = fake_checkpoint(ckpts / "last.ckpt", 6)
    os.utime(older, (1, 1))  # the oldest
    last.write_bytes(last.read_bytes()[:50])  # killed mid-write by a tool that is not atomic
    with start_checkpoint({"ckpt_path": None}, tmp_path / "run") as start:
        assert start.path == str(best) and start.checkpoint["global_step"] == 4
    assert "last.ckpt: not a readable checkpoint" in caplog.text
    assert f"resuming from {best} instead (step 4)" in caplog.text
    for path in (best, older):
        path.write_bytes(b"")
    with (
        pytest.raises(ConfigError, match=r"none of its checkpoints loads:(\n  - .*){3}"),
        start_checkpoint({"ckpt_path": None}, tmp_path / "run"),
    ):
        pass
    with start_checkpoint({"ckpt_path": None}, tmp_path / "fresh") as start:
        assert start == Start()  # a new run starts from scratch


def test_checkpoint_io_reads_safely_and_writes_atomically(tmp_path: Path) -> None:
    io = SafeCheckpointIO({"given": {"state_dict": {}, "global_step": 9}})
    assert io.load_checkpoint("given")["global_step"] == 9  # preloaded: not read again
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 5}, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary left
    assert io.load_checkpoint(path)["global_step"] == 5
    marker = tmp_path / "pwned"
    with pytest.raises(CheckpointError, match="refused"):
        io.load_checkpoint(write_trap(tmp_path / "trap.ckpt", marker, zipped=True))
    assert not marker.exists()


def test_a_checkpoint_of_another_model_is_a_config_error() -> None:
    module = torch.nn.Linear(4, 2)
    fits = Start("x.ckpt", {"state_dict": module.state_dict(), "global_step": 1})
    check_checkpoint_fits(fits, module)
    other = Start("x.ckpt", {"state_dict": torch.nn.Linear(8, 2).state_dict(), "global_step": 1})
    with pytest.raises(ConfigError, match=r"weight: \(2, 8\) in the checkpoint, \(2, 4\) here"):
        check_checkpoint_fits(other, module)


# --------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def composed() -> DictConfig:
    return compose_config()


INF, NAN = float("inf"), float("nan")  # what `optim.lr=1e400` and `optim.lr=nan` parse to


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("optim.lr", INF, "optim.lr must be a finite number, got inf"),
        ("optim.lr", NAN, "optim.lr must be a finite number, got nan"),
        ("model.dropout", NAN, "model.dropout must be a finite number, got nan"),
        ("optim.betas", [0.9, NAN], r"optim.betas must be a list of a finite number"),
        ("mixer.dropout", INF, "mixer.dropout must be a finite number"),
        ("trainer.limit_val_batches", 0, "trainer.limit_val_batches=0 turns validation off"),
    ],
)
def test_the_schema_refuses_non_finite_numbers_and_no_validation(
    composed: DictConfig, key: str, value: object, message: str
) -> None:
    cfg = composed.copy()
    OmegaConf.update(cfg, key, value)
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


def test_a_bare_value_override_is_a_clear_error(capsys: pytest.CaptureFixture) -> None:
    assert main(["=5"]) == 2
    assert "'=5': an override needs a key before '='" in capsys.readouterr().err


def test_a_model_too_large_for_the_machine_is_refused_with_the_numbers() -> None:
    config = run_config("model.d_model=10000000")
    task = SimpleNamespace(
        vocab_size=256,
        causal=True,
        max_len=64,
        num_classes=None,
        task_type="lm",
        max_source_len=None,
    )
    with pytest.raises(ConfigError, match=r"model\.d_model=10000000.* parameters.*PiB.*more than"):
        check_model_memory(config, task)
    check_model_memory(run_config("model.d_model=32"), task)  # fits


# -------------------------------------------------------------------------------- divergence
def test_the_first_non_finite_value_stops_training_with_its_step() -> None:
    guard = StopOnDivergence()
    trainer = SimpleNamespace(global_step=5, log_every_n_steps=10, precision_plugin=object())
    module = SimpleNamespace(grad_norm=torch.tensor(float("inf")))
    guard.on_train_batch_start(trainer, module, None, 0)
    trainer.global_step = 6  # the batch stepped the optimiser: its gradient norm is watched
    guard.on_train_batch_end(trainer, module, {"loss": torch.tensor(2.0)}, None, 0)
    with pytest.raises(Diverged, match="train/grad_norm is inf at step 5") as info:
        guard.check()  # what a validation or a checkpoint save runs first
    assert (info.value.metric, info.value.step) == ("train/grad_norm", 5)
    guard.check()  # reported once

    scaled = SimpleNamespace(
        global_step=6, log_every_n_steps=1, precision_plugin=SimpleNamespace(scaler=object())
    )
    guard.on_train_batch_start(scaled, module, None, 0)
    scaled.global_step = 7  # fp16: an overflowing gradient is the loss scaler's to skip
    guard.on_train_batch_end(scaled, module, {"loss": torch.tensor(2.0)}, None, 0)
    guard.on_train_batch_start(scaled, module, None, 0)
    scaled.global_step = 8
    with pytest.raises(Diverged, match="train/loss is nan at step 7"):
        guard.on_train_batch_end(scaled, module, {"loss": torch.tensor(float("nan"))}, None, 0)


# ------------------------------------------------------------ real runs, through the CLI
TINY_RUN = [*TINY, "logger=none"]  # the train tests' tiny run, without W&B
FAULTS_HELPER = """
import os, signal
import pytorch_lightning as pl
import torch

class SignalAt(pl.Callback):
    def __init__(self, step, signal):
        self.step, self.signal = step, signal

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step and trainer.ckpt_path is None:  # not once resumed
            os.kill(os.getpid(), getattr(signal, self.signal))

class PoisonAt(pl.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, *args):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for this module's runs: the helper callbacks, a shared data cache."""
    root = tmp_path_factory.mktemp("faults")
    (root / "faults_helper.py").write_text(FAULTS_HELPER)
    return root


def train_cli(root: Path, run_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root), "MIXERLAB_CACHE": str(root / "cache")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mixerlab.experiments.cli",
            "train",
            *argv,
            f"hydra.run.dir={run_dir}",
        ],
        cwd=root,
        env={**env, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def signal_at(step: int, signal_name: str) -> str:
    """The override that makes a run send itself ``signal_name`` after optimiser step ``step``
    (once: not again after it resumes)."""
    return f"callbacks.extra=[{{_target_:faults_helper.SignalAt,step:{step},signal:{signal_name}}}]"


def results_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
def test_a_checkpoint_url_that_runs_code_stops_the_run(
    runs: Path, served: str, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    write_trap(tmp_path / "www" / "trap.ckpt", marker, zipped=False)
    proc = train_cli(runs, tmp_path / "run", *TINY_RUN, f"ckpt_path={served}/trap.ckpt")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "trap.ckpt: refused" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_killed_run_says_running_and_resumes_past_a_damaged_last_checkpoint(
    runs: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    kill = signal_at(3, "SIGKILL")
    first = train_cli(runs, run_dir, *TINY_RUN, kill)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    killed = results_of(run_dir)  # written at the start and after the validation at step 2
    assert killed["status"] == "running" and killed["last_step"] == 2
    assert isinstance(killed["pid"], int) and killed["host"] and "val/loss" in killed["metrics"]

    ckpts = run_dir / "checkpoints"
    (ckpts / "last.ckpt").write_bytes((ckpts / "last.ckpt").read_bytes()[:1000])
    resumed = train_cli(runs, run_dir, *TINY, kill)  # the same run (W&B aside) goes on
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "last.ckpt: not a readable checkpoint" in resumed.stderr
    assert f"resuming from {ckpts / 'best.ckpt'} instead (step 2)" in resumed.stderr
    finished = (run_dir / "results.json").read_bytes()
    assert json.loads(finished)["status"] == "finished" and json.loads(finished)["last_step"] == 4

    for ckpt in ckpts.glob("*.ckpt"):
        ckpt.write_bytes(b"PK\x03\x04")
    broken = train_cli(runs, run_dir, *TINY_RUN, kill, "trainer.max_steps=6")
    assert broken.returncode == 2 and "none of its checkpoints loads" in broken.stderr
    assert (run_dir / "results.json").read_bytes() == finished  # the finished run stands


@pytest.mark.slow
def test_sigterm_saves_and_exits_143(runs: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    term = signal_at(3, "SIGTERM")
    proc = train_cli(runs, run_dir, *TINY_RUN, term)
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert results_of(run_dir)["status"] == "interrupted"
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 3


@pytest.mark.slow
def test_a_diverging_run_stops_with_the_step_and_keeps_no_broken_checkpoint(
    runs: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    poison = "callbacks.extra=[{_target_:faults_helper.PoisonAt,step:3}]"
    proc = train_cli(runs, run_dir, *TINY_RUN, "trainer.max_steps=6", poison)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "training diverged: train/loss is nan at step 3" in proc.stderr
    assert "Traceback" not in proc.stderr
    results = results_of(run_dir)
    assert results["status"] == "diverged" and "at step 3" in results["error"]
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
        checkpoint = load_checkpoint(ckpt)
        assert checkpoint["global_step"] <= 2
        assert all(torch.isfinite(w).all() for w in checkpoint["state_dict"].values())
