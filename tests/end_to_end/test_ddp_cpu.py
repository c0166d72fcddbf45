"""trainer=ddp_cpu: one run over two CPU processes (Lightning's DDP on gloo), run for real in
subprocesses, as a multi-GPU run takes the same path: it steps like one process on both processes'
batches together, and leaves one run's files, written by rank 0."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from cli_runs import mixerlab
from configs import run_config

from mixerlab.experiments.benchmarks.gpu_check import DDP_TASK, ddp_equivalence, last_weights
from mixerlab.experiments.run.schema import ConfigError, available_cores

pytestmark = pytest.mark.skipif(available_cores() < 2, reason="DDP on the CPU needs 2 cores")


def train(
    run_dir: Path, cache: Path, *overrides: str, path: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``mixerlab train`` in a subprocess (``path``: where it imports test helpers from)."""
    env = {**os.environ, "MIXERLAB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    env |= {"PYTHONPATH": str(path)} if path else {}
    done = mixerlab(env, cache.parent, "train", *DDP_TASK, *overrides, f"hydra.run.dir={run_dir}")
    assert done.returncode == 0 or not check, done.stderr[-3000:]
    return done


# A callback the runs load from the test's folder (PYTHONPATH): each rank in ``ranks`` sends
# itself ``signum`` after training batch ``batch`` (0-based), noting the time first; not again
# once resumed.
SIGNALLER = """
import os, time
import pytorch_lightning as pl

class SignalAt(pl.Callback):
    def __init__(self, batch, ranks, signum, note):
        self.batch, self.ranks, self.signum, self.note = batch, ranks, signum, note

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == self.batch and trainer.global_rank in self.ranks:
            if trainer.ckpt_path is None:
                with open(self.note, "w") as note:
                    note.write(str(time.time()))
                os.kill(os.getpid(), self.signum)
"""


def signal_at(folder: Path, batch: int, ranks: list[int], signum: int) -> tuple[str, Path]:
    """The override that sends ``signum`` to ``ranks`` after ``batch``, and the note's path."""
    (folder / "signaller.py").write_text(SIGNALLER)
    note = folder / "signalled_at"
    spec = f"{{_target_:signaller.SignalAt,batch:{batch},ranks:{ranks},signum:{signum},"
    return f"callbacks.extra=[{spec}note:'{note}'}}]", note


# Checkpoints at steps 3 and 6 of 8; the kill comes after step 5.
FAULT_RUN = ("trainer=ddp_cpu", "task.datamodule.batch_size=8", "trainer.max_steps=8")
# Two batches a step and dropout (each process draws its own): a SIGTERM lands inside an
# accumulation, and an exact resume needs every process's random generators back.
SIGTERM_RUN = (
    *FAULT_RUN[:2], "trainer.max_steps=4", "trainer.accumulate_grad_batches=2",
    "trainer.val_check_interval=4", "model.dropout=0.1",
)  # fmt: skip


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run the killed ones must end as."""
    root = tmp_path_factory.mktemp("ddp")
    train(root / "straight", root / "cache", *FAULT_RUN)
    return root / "straight"


@pytest.fixture(scope="module")
def straight_accumulating(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run the SIGTERM-stopped ones must end as."""
    root = tmp_path_factory.mktemp("ddp_accumulating")
    train(root / "straight", root / "cache", *SIGTERM_RUN)
    return root / "straight"


def assert_same_weights(run_dir: Path, reference: Path) -> None:
    resumed, uninterrupted = last_weights(run_dir), last_weights(reference)
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name], value, atol=0, rtol=0, msg=name)


def processes_of(run_dir: Path) -> list[str]:
    """The processes whose command line names ``run_dir`` (both ranks name it)."""
    found = subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True)
    return found.stdout.split()


@pytest.mark.slow
@pytest.mark.parametrize("rank", [1, 0])
def test_a_killed_rank_ends_the_run_and_resume_ends_it_as_the_uninterrupted_one(
    straight: Path, tmp_path: Path, rank: int
) -> None:
    """kill -9 of either process ends the other within seconds (gloo sees its peer gone; the
    strategy's 120 s timeout bounds a collective that hangs), and ``resume=`` finishes the run
    with the uninterrupted run's weights. Rank 0 writes the record: when rank 1 dies it says
    failed and which rank saw what; when rank 0 dies, no one can, and the record stays running."""
    kill, note = signal_at(tmp_path, 4, [rank], signal.SIGKILL)  # after step 5
    run_dir = tmp_path / "run"
    cache = straight.parent / "cache"
    killed = train(run_dir, cache, *FAULT_RUN, kill, path=tmp_path, check=False)
    assert killed.returncode != 0
    deadline = time.time() + 60
    while processes_of(run_dir) and time.time() < deadline:
        time.sleep(0.5)
    assert not processes_of(run_dir), "a process of the killed run is still alive"
    assert time.time() - float(note.read_text()) < 60  # every process gone within a minute
    results = json.loads((run_dir / "results.json").read_text())
    if rank == 1:
        assert results["status"] == "failed"
        assert results["error"].startswith("rank 0 of 2: ")
        assert "rank 0 of 2" in killed.stderr
    else:
        assert results["status"] == "running"  # its writer is gone: resume= says what it is
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 3
    train(run_dir, cache, *FAULT_RUN, f"resume={run_dir}", path=tmp_path)
    assert json.loads((run_dir / "results.json").read_text())["status"] == "finished"
    assert_same_weights(run_dir, straight)


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [[0], [1], [0, 1]], ids=["rank0", "rank1", "every_rank"])
def test_a_sigterm_stops_every_rank_after_the_same_step_and_resume_is_exact(
    straight_accumulating: Path, tmp_path: Path, ranks: list[int]
) -> None:
    """SIGTERM to one process or to both, after the first of step 2's two batches: every
    process stops after step 2 (a step's end, never inside an accumulation, whose partial
    gradients differ between processes), rank 0 saves the interrupt's checkpoint and the run
    exits 143 within seconds, and ``resume=`` ends it as the uninterrupted run, dropout included.
    (Lightning's own handler stopped the signalled process alone: the run hung to the 120 s
    timeout and failed.)"""
    term, note = signal_at(tmp_path, 2, ranks, signal.SIGTERM)
    run_dir, cache = tmp_path / "run", straight_accumulating.parent / "cache"
    stopped = train(run_dir, cache, *SIGTERM_RUN, term, path=tmp_path, check=False)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert time.time() - float(note.read_text()) < 60  # Lightning's own path took the timeout
    assert not processes_of(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["status"], results["last_step"]) == ("interrupted", 2)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 2
    saved = checkpoint["mixerlab_resume"]
    assert saved["grads"] == {} and len(saved["random_by_rank"]) == 2
    assert not torch.equal(saved["random_by_rank"][0]["torch"], saved["random_by_rank"][1]["torch"])
    train(run_dir, cache, *SIGTERM_RUN, f"resume={run_dir}", path=tmp_path)
    assert json.loads((run_dir / "results.json").read_text())["status"] == "finished"
    assert_same_weights(run_dir, straight_accumulating)


@pytest.mark.slow
def test_two_processes_step_like_one_on_their_batches_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes of batch 8 end where one process of batch 16 ends: rank r reads every
    second example of the one order from the r-th, and the step's loss is the mean over every
    scored token of both, not the mean of two per-process means. The two runs are the GPU
    check's DDP item as it runs without two GPUs."""
    monkeypatch.setenv("MIXERLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert "tolerance 1e-05" in ddp_equivalence(tmp_path, gpus=0)
    one, two = tmp_path / "ddp_one", tmp_path / "ddp_two"
    single, split = last_weights(one), last_weights(two)
    assert single.keys() == split.keys()
    for name, value in single.items():
        torch.testing.assert_close(split[name], value, atol=1e-6, rtol=1e-5, msg=name)
    # one run's files, written once: the same as one process leaves, nothing of rank 1's
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    results = json.loads((two / "results.json").read_text())
    assert results["status"] == "finished" and results["last_step"] == 6
    single_results = json.loads((one / "results.json").read_text())  # validation: reduced over
    for metric in ("val/loss", "val/acc", "val/exact_acc"):  # the ranks' halves of the same set
        assert results["metrics"][metric] == pytest.approx(single_results["metrics"][metric])
    assert results["compute"][-1]["devices"] == 2
    logged = [train_losses(run) for run in (one, two)]  # each step's mean over all its tokens
    assert list(logged[1]) == list(range(6))  # one row a step, not one a process
    for step, loss in logged[0].items():
        assert logged[1][step] == pytest.approx(loss, rel=1e-5)


def train_losses(run_dir: Path) -> dict[int, float]:
    with (run_dir / "metrics.csv").open() as rows:
        return {
            int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(rows) if r["train/loss"]
        }


def test_more_cpu_processes_than_cores_are_refused() -> None:
    cores = available_cores()
    with pytest.raises(ConfigError, match=rf"trainer.devices={cores + 1} asks for .*<={cores}"):
        run_config("trainer=ddp_cpu", f"trainer.devices={cores + 1}")
    with pytest.raises(ConfigError, match=r"trainer.strategy, given as a mapping, needs _target_"):
        run_config("trainer=ddp_cpu", "~trainer.strategy._target_")
    assert run_config("trainer=ddp_cpu")["trainer"]["strategy"]["timeout"]["seconds"] == 120
