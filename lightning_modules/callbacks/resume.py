"""The callbacks that let an interrupted run resume and end exactly where the uninterrupted run
ends: a checkpoint at the interrupt (:class:`CheckpointOnInterrupt`), taken by every process of a
multi-process run at the same step (:class:`StopTogether`), and what a checkpoint needs beyond
Lightning's own state (:class:`ResumeState`). The data order's part is the training loader's
(``tasks/_resumable.py``)."""

from __future__ import annotations

import random
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mixerlab.lightning_modules.record import LAST_CHECKPOINT


class CheckpointOnInterrupt(pl.Callback):
    """Saves ``last.ckpt`` when training is interrupted (Ctrl-C or SIGTERM, e.g. a preempted
    job), so a re-run resumes there.

    Lightning catches both, calls ``on_exception`` and exits (``mixerlab train`` then exits 130
    or, after SIGTERM, 143); without this the run would resume from the last validation's
    checkpoint and redo the steps since.
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.path = Path(dirpath) / LAST_CHECKPOINT

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) and trainer.global_step:
            trainer.save_checkpoint(self.path, weights_only=False)  # the full state, to resume


class StopTogether(pl.Callback):
    """In a run over several processes, a SIGTERM to any of them stops all of them after the same
    optimiser step, where each saves the interrupt's checkpoint as one process does.

    Lightning's own handler (2.6) lets the signalled process stop at the end of its batch while
    the others start the next one, so their collectives stop matching: the run hangs until the
    process group's timeout and fails without the interrupt's checkpoint (measured here: a
    SIGTERM to rank 0 of ``trainer=ddp_cpu`` ended the run after 160 s, exit 1;
    github.com/Lightning-AI/pytorch-lightning/issues/20806). Here the handler only notes the
    signal; after each optimiser step the processes add up their notes (one number), and if any
    has one, each sets Lightning's SIGTERM flag, which stops it at the end of that batch. The
    stop never falls inside a gradient accumulation, whose partial gradients differ between
    processes. One process keeps Lightning's handler.
    """

    def __init__(self) -> None:
        self._signalled = False
        self._step = 0

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self._signalled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:  # after Lightning registered its handlers: replace its own
            self._signalled = False
            signal.signal(signal.SIGTERM, self._note)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        if trainer.world_size == 1 or trainer.global_step == self._step:  # one, or accumulating
            return
        note = torch.tensor(float(self._signalled), device=pl_module.device)
        if trainer.strategy.reduce(note, reduce_op="sum") > 0:
            # no public setter: the flag Lightning's loops read at the end of this batch
            trainer._signal_connector.received_sigterm = True


class ResumeState(pl.Callback):
    """Puts into every checkpoint what a resumed run needs, beyond what Lightning saves, to end
    exactly where the uninterrupted run ends, and puts it back on resume.

    Lightning saves the weights, the optimiser and LR schedule, the loop counters and (through
    ``ResumableLoader``) the position in the data, but not the random generators' states, which
    dropout draws from, nor the gradients summed so far when the checkpoint falls inside a
    gradient accumulation (``trainer.accumulate_grad_batches``), as an interrupt's checkpoint
    can. Both are saved here (torch CPU and CUDA, NumPy and Python generators; the gradients
    only inside an accumulation) and restored just before the first training batch after the
    restore: the uninterrupted run drew nothing between the save and that batch either, while
    the resumed run's start-up before it (building the model, the data iterators) may draw.
    Over several processes each draws its own dropout: every process's generators are gathered
    into the checkpoint (which rank 0 writes) and each takes its own back on resume.
    """

    KEY = "mixerlab_resume"

    def __init__(self) -> None:
        self._accumulating = False
        self._pending: dict[str, Any] | None = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step = trainer.global_step
        if self._pending is not None:
            by_rank = self._pending.get("random_by_rank") or []
            mine = len(by_rank) == trainer.world_size
            _set_random_states(by_rank[trainer.global_rank] if mine else self._pending["random"])
            grads = self._pending["grads"]
            for name, param in pl_module.named_parameters():
                if name in grads:
                    param.grad = grads[name].to(param.device)
            self._pending = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        self._accumulating = trainer.global_step == self._step  # this batch did not step

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        grads = {}
        if self._accumulating:
            grads = {
                name: param.grad.detach().cpu()
                for name, param in pl_module.named_parameters()
                if param.grad is not None
            }
        states = _random_states()
        checkpoint[self.KEY] = {"random": states, "grads": grads}
        if trainer.world_size > 1:  # every process saves together: gather theirs for rank 0
            by_rank: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(by_rank, states)
            checkpoint[self.KEY]["random_by_rank"] = by_rank

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._pending = checkpoint.get(self.KEY)  # None in a checkpoint from before it existed


def _random_states() -> dict[str, Any]:
    """The global random generators' states, as types a tensors-only checkpoint load accepts."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
        "python": random.getstate(),
    }


def _set_random_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(states["python"])
