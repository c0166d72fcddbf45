"""Callbacks of a mixerlab run: throughput accounting, progress bar, checkpoint on interrupt,
the divergence stop; and the checkpoint I/O every save and restore of a run goes through."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.plugins import TorchCheckpointIO
from pytorch_lightning.trainer.states import RunningStage, TrainerFn
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import Tensor, nn

from mixerlab.lightning_modules.io import load_checkpoint, write_atomic

# Training FLOPs per token = 3 x forward: the backward pass costs about twice the forward
# (gradients for activations and for weights), the convention of Kaplan et al. and PaLM's MFU.
TRAINING_FLOPS_PER_FORWARD = 3
TRAINING = RunningStage.TRAINING


def _batch_size(batch: dict[str, Tensor]) -> int:
    return batch["mask"].shape[0]


class ThroughputMonitor(pl.callbacks.ThroughputMonitor):
    """Lightning's ThroughputMonitor, fed once per logging interval with what a run counts.

    Items are real tokens (``mask.sum()``: padding does not inflate the rate); FLOPs are the
    training FLOPs of those tokens from the model's own accounting,
    ``TRAINING_FLOPS_PER_FORWARD x model.flops_per_token(seq_len)`` per token (none for a model
    that does not count its FLOPs); batches are optimiser steps. Lightning's own monitor syncs
    the device and reads the counts every batch; here the counts stay on the device and
    Lightning's ``Throughput`` is updated only at the steps Lightning logs (every
    ``log_every_n_steps`` optimiser steps), so rates are over the last interval and counting
    adds no device sync per step.

    Logs the rates over the last interval, ``train/tokens_per_s`` (in the progress bar too),
    ``train/step_time_s``, Lightning's ``train/device/flops_per_sec`` and, where the device's
    peak is known (GPUs), ``train/device/mfu``; ``params`` once at the start. The average over
    the whole run is :attr:`tokens_per_s` (``tokens_per_s`` in results.json). Validation, and
    what runs between it and the next training batch (checkpointing), is not training time: the
    clock pauses meanwhile. Validation throughput is not logged: its rows would fall at
    validation-batch indices, not at the training steps metrics.csv and W&B are keyed on.
    """

    def __init__(self) -> None:
        super().__init__(batch_size_fn=_batch_size, window_size=2)
        self._flops_per_token: dict[int, float | None] = {}
        self._counted_tokens, self._counted_s = 0, 0.0

    @property
    def tokens_per_s(self) -> float:
        """Training tokens per second of this process, over every interval it logged."""
        return self._counted_tokens / self._counted_s if self._counted_s else float("nan")

    def _training_flops_per_token(self, model: nn.Module, seq_len: int) -> float | None:
        if seq_len not in self._flops_per_token:
            try:
                flops = TRAINING_FLOPS_PER_FORWARD * model.flops_per_token(seq_len)
            except NotImplementedError:  # a plugin mixer without its FLOP count
                flops = None
            self._flops_per_token[seq_len] = flops
        return self._flops_per_token[seq_len]

    @rank_zero_only
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer)  # resets Lightning's training Throughput and clock
        self._pending_tokens: Tensor | int = 0
        self._pending_flops: Tensor | float | None = 0.0
        self._first_step = trainer.global_step
        self._last_logged_step = trainer.global_step
        self._baseline_s: float | None = None
        self._paused_at: float | None = None
        for logger in trainer.loggers:
            logger.log_metrics({"params": pl_module.model.num_params()}, step=trainer.global_step)

    @rank_zero_only
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._paused_at is not None:
            self._t0s[TRAINING] += time.perf_counter() - self._paused_at
            self._paused_at = None
        per_token = self._training_flops_per_token(pl_module.model, batch["mask"].shape[1])
        if self._baseline_s is None:  # rates start at the first batch, not at loader start-up
            self._baseline_s = self._record(trainer, 0, None if per_token is None else 0.0)
        tokens = batch["mask"].sum()  # stays on the device until the next logged step
        self._pending_tokens = self._pending_tokens + tokens
        if per_token is None or self._pending_flops is None:
            self._pending_flops = None
        else:
            self._pending_flops = self._pending_flops + per_token * tokens
        self._samples[TRAINING] += self.batch_size_fn(batch)

    @rank_zero_only
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step  # unchanged by a batch that only accumulates gradients
        if step == self._last_logged_step or step % trainer.log_every_n_steps:
            return  # Lightning logs this batch's metrics at the same steps
        self._last_logged_step = step
        flops = None if self._pending_flops is None else float(self._pending_flops)
        elapsed = self._record(trainer, int(self._pending_tokens), flops)
        self._pending_tokens, self._pending_flops = 0, None if flops is None else 0.0
        self._counted_tokens, self._counted_s = self._lengths[TRAINING], elapsed - self._baseline_s
        rates = self._throughputs[TRAINING].compute()
        pl_module.log("train/tokens_per_s", rates["device/items_per_sec"], prog_bar=True)
        pl_module.log("train/step_time_s", 1.0 / rates["device/batches_per_sec"])
        pl_module.log_dict(
            {f"train/{k}": v for k, v in rates.items() if "flops" in k or "mfu" in k}
        )

    def _record(self, trainer: pl.Trainer, tokens: int, flops: float | None) -> float:
        """Add ``tokens`` and ``flops`` done since the last record to Lightning's ``Throughput``,
        as totals since training started; returns the training seconds so far."""
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # the clock must see the queued work done
        elapsed = time.perf_counter() - self._t0s[TRAINING]
        self._lengths[TRAINING] += tokens
        self._throughputs[TRAINING].update(
            time=elapsed,
            batches=trainer.global_step - self._first_step,
            samples=self._samples[TRAINING],
            lengths=self._lengths[TRAINING],
            flops=flops,
        )
        return elapsed

    @rank_zero_only
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == TrainerFn.FITTING:
            self._paused_at = time.perf_counter()

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """Validation throughput is not logged (see the class docstring)."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The training clock resumes at the next training batch, not here."""


class ProgressBar(RichProgressBar):
    """Rich progress bar over the run's optimiser steps (``step ... 120/500``), with train/loss,
    val/loss and tokens/s, without the logger's run id.

    Runs are step-based (``max_steps``; Lightning's epoch count is unlimited, -1), so Lightning's
    per-epoch bar would read ``Epoch 0/-2`` and count batches of an epoch the run never ends.
    """

    @property
    def total_train_batches(self) -> int:
        return self.trainer.max_steps

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """One bar for the whole run: a new epoch of the data continues it (resetting it would
        restart its clock and garble its speed)."""
        if self.train_progress_bar_id is None:
            super().on_train_epoch_start(trainer, pl_module)

    def _get_train_description(self, current_epoch: int) -> str:
        return f"{'step':{len(self.validation_description)}}"  # aligned with the validation bar

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, *args)
        self._update(self.train_progress_bar_id, trainer.global_step)  # steps, not batch_idx

    def get_metrics(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        if "train/tokens_per_s" in metrics:
            metrics["tokens/s"] = f"{float(metrics.pop('train/tokens_per_s')):,.0f}"
        return metrics


class CheckpointOnInterrupt(pl.Callback):
    """Saves ``last.ckpt`` when training is interrupted (Ctrl-C or SIGTERM, e.g. a preempted
    job), so a re-run resumes there.

    Lightning catches both, calls ``on_exception`` and exits (``mixerlab train`` then exits 130
    or, after SIGTERM, 143); without this the run would resume from the last validation's
    checkpoint and redo the steps since.
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.path = Path(dirpath) / "last.ckpt"

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) and trainer.global_step:
            trainer.save_checkpoint(self.path, weights_only=False)  # the full state, to resume


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


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, made safe both ways: restoring reads tensors only (through
    :func:`mixerlab.lightning_modules.io.load_checkpoint`, never a full unpickle), and saving
    replaces the file atomically, so a run killed while saving leaves the previous checkpoint whole.

    ``preloaded`` maps paths to checkpoints the run has already loaded and checked before
    ``fit`` (see ``mixerlab.experiments.run_guard``); Lightning's restore takes them from there
    instead of reading the file again.
    """

    def __init__(self, preloaded: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.preloaded = dict(preloaded or {})

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return self.preloaded.pop(str(path), None) or load_checkpoint(path)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(path), buffer.getvalue())
