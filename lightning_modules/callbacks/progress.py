"""The progress bar of a run: optimiser steps, not epochs."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """Rich progress bar over the run's optimiser steps (``step ... 120/500``), with train/loss,
    val/loss and tokens/s, without the logger's run id.

    Runs are step-based (``max_steps``; Lightning's epoch count is unlimited, -1), so Lightning's
    per-epoch bar would read ``Epoch 0/-2`` and count batches of an epoch the run never ends.
    """

    @property
    def total_train_batches(self) -> int:
        return self.trainer.max_steps

    @property
    def train_description(self) -> str:
        """``step``, as wide as the validation bar's description so that the bars align."""
        return f"{'step':{len(self.validation_description)}}"

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """One bar for the whole run: a new epoch of the data continues it (resetting it would
        restart its clock and garble its speed)."""
        if self.train_progress_bar_id is None:
            super().on_train_epoch_start(trainer, pl_module)
            self._show_steps()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, *args)
        self._show_steps(completed=trainer.global_step, visible=True)  # steps, not batch_idx
        self.refresh()

    def _show_steps(self, **update: Any) -> None:
        """Name the training bar by :attr:`train_description` (in the theme's style) and apply
        ``update`` (rich's ``Progress.update`` arguments) to it."""
        if self.progress is None or self.train_progress_bar_id is None or self.is_disabled:
            return
        style = self.theme.description
        description = f"[{style}]{self.train_description}" if style else self.train_description
        self.progress.update(self.train_progress_bar_id, description=description, **update)

    def get_metrics(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        if "train/tokens_per_s" in metrics:
            metrics["tokens/s"] = f"{float(metrics.pop('train/tokens_per_s')):,.0f}"
        return metrics
