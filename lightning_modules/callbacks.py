"""Callbacks of a mixerlab run: throughput accounting, progress bar, checkpoint on interrupt."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import Tensor


class ThroughputMonitor(pl.Callback):
    """Logs ``params`` once, and ``tokens_per_s`` and ``step_time_s`` every ``window`` steps.

    Tokens are the real tokens of each batch (``mask.sum()``), so padding does not inflate the
    rate. The mask sums stay on the device until the window closes, so counting adds no device
    synchronisation per step. Validation runs restart the window so they are never counted as
    training time. ``tokens_per_s`` is also shown in the progress bar.
    """

    def __init__(self, window: int = 10) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1 step, got {window}")
        self.window = window
        self.total_tokens = 0
        self.total_time_s = 0.0
        self._restart_window()

    def _restart_window(self) -> None:
        self._window_start: float | None = None
        self._window_tokens: Tensor | int = 0
        self._window_steps = 0

    @property
    def tokens_per_s(self) -> float:
        """Average over every closed window of this process's training."""
        return self.total_tokens / self.total_time_s if self.total_time_s else float("nan")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = sum(p.numel() for p in pl_module.parameters())
        for logger in trainer.loggers:
            logger.log_metrics({"params": params}, step=trainer.global_step)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._window_start is None:
            self._window_start = time.perf_counter()
        self._window_tokens = self._window_tokens + batch["mask"].sum()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._window_steps += 1
        if self._window_steps < self.window or self._window_start is None:
            return
        elapsed = time.perf_counter() - self._window_start
        tokens = int(self._window_tokens)
        self.total_tokens += tokens
        self.total_time_s += elapsed
        metrics = {"tokens_per_s": tokens / elapsed, "step_time_s": elapsed / self._window_steps}
        for logger in trainer.loggers:  # Lightning's convention: the step is the batch's index
            logger.log_metrics(metrics, step=trainer.global_step - 1)
        pl_module.log("tokens_per_s", metrics["tokens_per_s"], prog_bar=True, logger=False)
        self._restart_window()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restart_window()


class ProgressBar(RichProgressBar):
    """Rich progress bar with train/loss, val/loss and tokens/s, without the logger's run id."""

    def get_metrics(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        if "tokens_per_s" in metrics:
            metrics["tokens/s"] = f"{float(metrics.pop('tokens_per_s')):,.0f}"
        return metrics


class CheckpointOnInterrupt(pl.Callback):
    """Saves ``last.ckpt`` when training is interrupted (Ctrl-C or SIGTERM, e.g. a preempted
    job), so a re-run resumes there.

    Lightning catches both, calls ``on_exception`` and exits; without this the run would resume
    from the last validation's checkpoint and redo the steps since.
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.path = Path(dirpath) / "last.ckpt"

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) and trainer.global_step:
            trainer.save_checkpoint(self.path)
