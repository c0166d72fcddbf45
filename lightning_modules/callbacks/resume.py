"""The callbacks that let an interrupted run resume and end exactly where the uninterrupted run
ends: a checkpoint at the interrupt (:class:`CheckpointOnInterrupt`) and what a checkpoint needs
beyond Lightning's own state (:class:`ResumeState`). The data order's part is the training
loader's (``tasks/_resumable.py``)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
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
            _set_random_states(self._pending["random"])
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
        checkpoint[self.KEY] = {"random": _random_states(), "grads": grads}

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
