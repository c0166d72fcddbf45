"""Training throughput: real tokens per second, step time and FLOPs of a run, built on
Lightning's public ``Throughput`` and callback hooks."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities import Throughput
from lightning_fabric.utilities.throughput import get_available_flops
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor, nn

# Training FLOPs per token = 3 x forward: the backward pass costs about twice the forward
# (gradients for activations and for weights), the convention of Kaplan et al. and PaLM's MFU.
TRAINING_FLOPS_PER_FORWARD = 3
# The dtype each Trainer precision computes in, which sets the device's peak FLOPs for MFU;
# every other precision computes in float32.
COMPUTE_DTYPES = {
    "16-mixed": torch.half,
    "16-true": torch.half,
    "bf16-mixed": torch.bfloat16,
    "bf16-true": torch.bfloat16,
    "64-true": torch.double,
}


class ThroughputMonitor(pl.Callback):
    """Training throughput, counted once per logging interval with what a run counts.

    Items are real tokens (``mask.sum()``, and a seq2seq batch's source tokens: padding does
    not inflate the rate); FLOPs are the
    training FLOPs of those tokens from the model's own accounting,
    ``TRAINING_FLOPS_PER_FORWARD x model.flops_per_token(seq_len)`` per token (none for a model
    that does not count its FLOPs); batches are optimiser steps. The counts stay on the device
    and Lightning's ``Throughput`` (a window of two updates) is updated only at the steps
    Lightning logs (every ``log_every_n_steps`` optimiser steps), so rates are over the last
    interval and counting adds no device sync per step.

    Logs the rates over the last interval, ``train/tokens_per_s`` (in the progress bar too),
    ``train/step_time_s``, ``train/device/flops_per_sec`` and, where the device's peak is known
    (GPUs), ``train/device/mfu``; ``params`` once at the start. The average over the whole run
    is :attr:`tokens_per_s` (``tokens_per_s`` in results.json). Validation, and what runs
    between it and the next training batch (checkpointing), is not training time: the clock
    pauses meanwhile. Validation throughput is not logged: its rows would fall at
    validation-batch indices, not at the training steps metrics.csv and W&B are keyed on.
    """

    def __init__(self) -> None:
        self._flops_per_token: dict[tuple[int, ...], float | None] = {}
        self.tokens = 0  # real training tokens through the last logged step
        self.seconds = 0.0  # training seconds they took

    @property
    def tokens_per_s(self) -> float:
        """Training tokens per second of this process, over every interval it logged."""
        return self.tokens / self.seconds if self.seconds else float("nan")

    def _training_flops_per_token(self, model: nn.Module, lengths: tuple[int, ...]) -> float | None:
        if lengths not in self._flops_per_token:
            try:
                flops = TRAINING_FLOPS_PER_FORWARD * model.flops_per_token(*lengths)
            except NotImplementedError:  # a plugin mixer without its FLOP count
                flops = None
            self._flops_per_token[lengths] = flops
        return self._flops_per_token[lengths]

    @rank_zero_only
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        peak = get_available_flops(
            trainer.strategy.root_device, COMPUTE_DTYPES.get(trainer.precision, torch.float32)
        )
        self._throughput = Throughput(
            available_flops=peak, world_size=trainer.world_size, window_size=2
        )
        self._t0 = time.perf_counter()
        self._samples, self._recorded_tokens = 0, 0
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
            self._t0 += time.perf_counter() - self._paused_at
            self._paused_at = None
        # a seq2seq batch: its source is read as well (the model counts FLOPs per token of both)
        source = batch.get("source_mask")
        lengths = (batch["mask"].shape[1], *(() if source is None else (source.shape[1],)))
        per_token = self._training_flops_per_token(pl_module.model, lengths)
        if self._baseline_s is None:  # rates start at the first batch, not at loader start-up
            no_flops = None if per_token is None else 0.0
            self._baseline_s = self._update_throughput(trainer, 0, no_flops)
        tokens = batch["mask"].sum()  # stays on the device until the next logged step
        if source is not None:
            tokens = tokens + source.sum()
        self._pending_tokens = self._pending_tokens + tokens
        if per_token is None or self._pending_flops is None:
            self._pending_flops = None
        else:
            self._pending_flops = self._pending_flops + per_token * tokens
        self._samples += batch["mask"].shape[0]

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
        elapsed = self._update_throughput(trainer, int(self._pending_tokens), flops)
        self._pending_tokens, self._pending_flops = 0, None if flops is None else 0.0
        self.tokens, self.seconds = self._recorded_tokens, elapsed - self._baseline_s
        rates = self._throughput.compute()
        pl_module.log("train/tokens_per_s", rates["device/items_per_sec"], prog_bar=True)
        pl_module.log("train/step_time_s", 1.0 / rates["device/batches_per_sec"])
        pl_module.log_dict(
            {f"train/{k}": v for k, v in rates.items() if "flops" in k or "mfu" in k}
        )

    def _update_throughput(self, trainer: pl.Trainer, tokens: int, flops: float | None) -> float:
        """Add ``tokens`` and ``flops`` done since the last record to the ``Throughput``, as
        totals since training started; returns the training seconds so far."""
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # the clock must see the queued work done
        elapsed = time.perf_counter() - self._t0
        self._recorded_tokens += tokens
        self._throughput.update(
            time=elapsed,
            batches=trainer.global_step - self._first_step,
            samples=self._samples,
            lengths=self._recorded_tokens,
            flops=flops,
        )
        return elapsed

    @rank_zero_only
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The training clock pauses here and resumes at the next training batch."""
        if not trainer.sanity_checking and trainer.state.fn == TrainerFn.FITTING:
            self._paused_at = time.perf_counter()
