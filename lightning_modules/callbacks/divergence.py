"""Stopping a run at its first non-finite training value, before any checkpoint sees it."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor


class Diverged(RuntimeError):
    """Training produced a non-finite value: the metric, its value and the step are named."""

    def __init__(self, metric: str, value: float, step: int) -> None:
        super().__init__(
            f"training diverged: {metric} is {value} at step {step}; no checkpoint was saved "
            "after it (try a lower optim.lr, a smaller optim.grad_clip or more warmup)"
        )
        self.metric, self.value, self.step = metric, value, step


class StopOnDivergence(pl.Callback):
    """Stops a run at its first non-finite training loss or gradient norm, raising
    :class:`Diverged`, before any checkpoint or validation sees the broken weights.

    The values stay on the device and are checked together, one device sync for many steps, at
    every logging step (``log_every_n_steps``), before every validation and every checkpoint
    save, and when training ends; the first bad one is reported with the step it was computed
    at (metrics.csv's step). Checking before a save is what keeps non-finite weights out of
    ``best.ckpt`` and ``last.ckpt``. The gradient norm is the module's ``grad_norm``, taken
    before clipping; it is not watched under fp16 mixed precision, whose loss scaler expects
    overflowing gradients now and then and skips those steps itself.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[int, str, Tensor]] = []
        self._step = 0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step = trainer.global_step  # the optimiser step this batch belongs to

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._pending.append((self._step, "train/loss", outputs["loss"].detach()))
        stepped = trainer.global_step > self._step  # not a batch that only accumulated
        if stepped and getattr(trainer.precision_plugin, "scaler", None) is None:
            self._pending.append((self._step, "train/grad_norm", pl_module.grad_norm.detach()))
        if trainer.global_step % trainer.log_every_n_steps == 0:
            self.check()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check()

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.check()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check()

    def check(self) -> None:
        """Raise :class:`Diverged` for the first non-finite value watched since the last check."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        values = torch.stack([value.float() for _, _, value in pending])  # (n,)
        for (step, metric, _), value, finite in zip(
            pending, values.tolist(), torch.isfinite(values).tolist(), strict=True
        ):
            if not finite:
                raise Diverged(metric, value, step)
