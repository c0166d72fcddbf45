"""The callback that makes a resumed run end exactly where the uninterrupted run ends: what a
checkpoint needs beyond Lightning's own state (see :class:`ResumeState`)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


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
