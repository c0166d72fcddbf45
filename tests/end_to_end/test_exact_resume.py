"""Exact resume: a run resumed from a checkpoint, after a crash, an interrupt or kill -9, ends
with the very weights and metrics of the run that was never interrupted (same seed, machine,
threads). The parts first (the resumable data order, the random states and accumulated
gradients a checkpoint carries), then real runs."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from configs import TINY, compose_config
from test_faults import TINY_RUN, results_of, runs, signal_at, train_cli  # noqa: F401  # runs: a fixture

from mixerlab.experiments.run.train import train
from mixerlab.lightning_modules.callbacks import ResumeState
from mixerlab.lightning_modules.checkpoints import SafeCheckpointIO, load_checkpoint
from mixerlab.lightning_modules.tasks._loading import build_loader, pad_collate
from mixerlab.lightning_modules.tasks._resumable import EpochShuffle, ResumableLoader


# ------------------------------------------------------------------------------ data order
def test_an_epochs_order_follows_from_seed_and_epoch_alone() -> None:
    def order(seed: int, epoch: int) -> list[int]:
        sampler = EpochShuffle(range(50), seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert sorted(order(0, 0)) == list(range(50))
    assert order(0, 0) == order(0, 0) and order(0, 3) == order(0, 3)
    assert order(0, 0) != order(0, 1)
    assert order(1, 0) != order(0, 1)  # not keyed by seed + epoch


def test_ranks_share_one_order_padded_to_equal_parts() -> None:
    whole = EpochShuffle(range(10), 7).order().tolist()
    parts = [list(EpochShuffle(range(10), 7, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(part) for part in parts] == [4, 4, 4]
    padded = whole + whole[:2]
    assert [i for row in zip(*parts, strict=True) for i in row] == padded


EXAMPLES = [(torch.tensor([i + 1, i + 2]), torch.tensor(i)) for i in range(10)]


class ByKey(torch.utils.data.Dataset):
    """EXAMPLES looked up by ``(epoch, index)`` keys, as fresh epochs and MLM's masks are."""

    def __len__(self) -> int:
        return len(EXAMPLES)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return EXAMPLES[key[1]]


def loader(num_workers: int, keyed: bool) -> ResumableLoader:
    """4 batches an epoch (3 + 3 + 3 + 1 examples), shuffled with seed 5."""
    kwargs: dict[str, Any] = {"shuffle_seed": 5}
    data: Any = EXAMPLES
    if keyed:
        data = ByKey()
        kwargs = {"sampler": EpochShuffle(data, 5, keyed=True)}
    built = build_loader(
        data, batch_size=3, collate_fn=pad_collate, num_workers=num_workers, **kwargs
    )
    assert isinstance(built, ResumableLoader)
    return built


def labels(batches: Any) -> list[list[int]]:
    return [batch["target"].tolist() for batch in batches]


@pytest.mark.parametrize(("num_workers", "keyed"), [(0, False), (1, False), (0, True)])
def test_a_restored_loader_goes_on_with_the_next_batch(num_workers: int, keyed: bool) -> None:
    first = loader(num_workers, keyed)
    epoch0 = iter(first)
    seen = labels([next(epoch0), next(epoch0)])
    state = first.state_dict()
    assert state == {"epoch": 0, "batches": 2}
    rest = labels(epoch0)
    assert sorted(i for batch in seen + rest for i in batch) == list(range(10))

    resumed = loader(num_workers, keyed)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(0)  # what Lightning does next, with the restored epoch
    assert labels(resumed) == rest
    assert resumed.state_dict() == first.state_dict() == {"epoch": 1, "batches": 0}

    first.sampler.set_epoch(1)
    at_epoch_end = loader(num_workers, keyed)
    at_epoch_end.load_state_dict(resumed.state_dict())
    assert labels(at_epoch_end) == labels(first) != seen + rest  # epoch 1's own order
    assert loader(0, False).state_dict() == {"epoch": 0, "batches": 0}


def test_validation_loaders_stay_plain() -> None:
    built = build_loader(EXAMPLES, batch_size=3, collate_fn=pad_collate, num_workers=0)
    assert not isinstance(built, ResumableLoader)
    with pytest.raises(ValueError, match="shuffle_seed or sampler, not both"):
        build_loader(
            EXAMPLES,
            batch_size=3,
            collate_fn=pad_collate,
            num_workers=0,
            shuffle_seed=1,
            sampler=EpochShuffle(EXAMPLES, 1),
        )


# ------------------------------------------------------------- what a checkpoint carries
def draws() -> tuple[list[float], float, float]:
    return torch.rand(3).tolist(), float(np.random.rand()), random.random()


def test_random_states_and_accumulated_gradients_survive_a_checkpoint(tmp_path: Path) -> None:
    module = torch.nn.Linear(3, 2)
    trainer = SimpleNamespace(global_step=4, world_size=1, global_rank=0)
    saver = ResumeState()
    saver.on_train_batch_start(trainer, module, None, 0)
    module(torch.ones(1, 3)).sum().backward()
    saver.on_train_batch_end(trainer, module)  # global_step unchanged: inside an accumulation
    checkpoint: dict[str, Any] = {"state_dict": module.state_dict(), "global_step": 4}
    saver.on_save_checkpoint(trainer, module, checkpoint)
    SafeCheckpointIO().save_checkpoint(checkpoint, tmp_path / "last.ckpt")
    expected_grads = [p.grad.clone() for p in module.parameters()]
    expected = draws()

    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    module.zero_grad(set_to_none=True)
    resumer = ResumeState()
    resumer.on_load_checkpoint(trainer, module, load_checkpoint(tmp_path / "last.ckpt"))
    resumer.on_train_batch_start(trainer, module, None, 0)
    assert draws() == expected
    for param, grad in zip(module.parameters(), expected_grads, strict=True):
        assert torch.equal(param.grad, grad)

    stepped = SimpleNamespace(global_step=5, world_size=1, global_rank=0)
    saver.on_train_batch_start(trainer, module, None, 1)
    saver.on_train_batch_end(stepped, module)
    after_step: dict[str, Any] = {}
    saver.on_save_checkpoint(stepped, module, after_step)
    assert after_step[ResumeState.KEY]["grads"] == {}  # the next batch starts from zero anyway


# -------------------------------------------------------------------------------- real runs
class Crash(RuntimeError):
    pass


class StopAtBatch(pl.Callback):
    """Ends training after its ``batch``-th batch: a crash (nothing saved: the run resumes from
    its newest periodic checkpoint, as after kill -9) or Ctrl-C (which saves ``last.ckpt``)."""

    def __init__(self, batch: int, error: type[BaseException]) -> None:
        self.batch, self.error, self.seen = batch, error, 0

    def on_train_batch_end(self, *args: Any) -> None:
        self.seen += 1
        if self.seen == self.batch:
            raise self.error


def final_state(run_dir: Path) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "finished"
    metrics = {k: v for k, v in results["metrics"].items() if k.startswith(("val/", "train/l"))}
    return metrics, load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]


# 12 steps of dropout over epochs of 8 batches (1056 tokens: 32 blocks of 33, 4 a batch)
RUN = [*TINY, "logger=none", "trainer.max_steps=12", "task.datamodule.max_train_tokens=1056"]
RUN += ["model.dropout=0.1"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "stop"),
    [
        (["trainer.val_check_interval=3"], StopAtBatch(8, Crash)),  # resumes at step 6
        (["trainer.val_check_interval=4"], StopAtBatch(10, Crash)),  # at 8, the epoch's end
        # Ctrl-C after 9 batches of 2 a step: saved in the middle of an accumulation
        (["trainer.val_check_interval=4", "trainer.accumulate_grad_batches=2"],
         StopAtBatch(9, KeyboardInterrupt)),
    ],
    ids=["mid-epoch", "epoch-end", "mid-accumulation"],
)  # fmt: skip
def test_a_resumed_run_ends_exactly_as_the_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: list[str], stop: StopAtBatch
) -> None:
    monkeypatch.setenv("MIXERLAB_CACHE", str(tmp_path / "cache"))
    cfg = compose_config(*RUN, *overrides)
    train(cfg, tmp_path / "straight")
    with pytest.raises(stop.error):
        train(cfg, tmp_path / "resumed", [stop])
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")["global_step"] < 12
    train(cfg, tmp_path / "resumed")

    (metrics, weights), (resumed_metrics, resumed_weights) = (
        final_state(tmp_path / run) for run in ("straight", "resumed")
    )
    assert resumed_metrics == metrics and "val/loss" in metrics
    assert weights.keys() == resumed_weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(resumed_weights[name], tensor), name


@pytest.mark.slow
def test_a_run_killed_hard_resumes_to_the_uninterrupted_result(runs: Path, tmp_path: Path) -> None:  # noqa: F811
    run = [*TINY_RUN, "trainer.max_steps=8", "trainer.val_check_interval=3", "model.dropout=0.1"]
    straight = train_cli(runs, tmp_path / "straight", *run)
    assert straight.returncode == 0, straight.stderr[-3000:]
    kill = signal_at(5, "SIGKILL")
    killed = train_cli(runs, tmp_path / "killed", *run, kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ckpt = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(ckpt)["global_step"] == 3  # the newest periodic checkpoint
    resumed = train_cli(runs, tmp_path / "killed", *run, kill)  # the same run goes on
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (
        results_of(tmp_path / "killed")["metrics"]["val/loss"]
        == (results_of(tmp_path / "straight")["metrics"]["val/loss"])
    )
    weights = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")["state_dict"]
    for name, tensor in load_checkpoint(ckpt)["state_dict"].items():
        assert torch.equal(tensor, weights[name]), name
