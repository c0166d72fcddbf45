"""``results.json`` over a run's life (:class:`RunRecord`), with what the record takes from the
trainer: the task's chance levels and the model's accounting."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from mixerlab.lightning_modules.callbacks.throughput import ThroughputMonitor
from mixerlab.lightning_modules.loggers import HistoryLogger
from mixerlab.lightning_modules.record import (
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    RESULTS_FILE,
    RunResults,
    decode_record,
)

log = logging.getLogger(__name__)


def chance_levels(trainer: pl.Trainer | None) -> dict[str, dict[str, Any]]:
    """The task's baselines (``TaskDataModule.baselines``) as ``{metric: {"value", "label",
    "how"}}`` for every validation metric the module logs: per set (``val/acc@<set>``) where it
    logs several sets, the pooled ``val/loss``/``val/acc`` where every set has the same
    baseline (pooling different ones would depend on how many positions each set scores),
    and ``val/ppl``/``val/bpb``, which follow from the loss. Empty before ``fit`` started and
    for a task that declares no baselines."""
    task = trainer.datamodule if trainer is not None else None
    module = trainer.lightning_module if trainer is not None else None
    if task is None or module is None:
        return {}
    try:
        baselines = task.baselines()
    except Exception as err:  # a plugin task's bug must not cost the run its results.json
        name = type(task).__name__
        log.warning(
            "mixerlab: no chance levels in results.json: %s.baselines() failed: %r", name, err
        )
        return {}
    per_set = {f"@{name}": b for name, b in baselines.items()}
    if len(set(baselines.values())) == 1 and set(baselines) == set(task.val_set_names):
        per_set[""] = next(iter(baselines.values()))
    levels = {}
    for suffix, baseline in per_set.items():
        values = {"loss": baseline.loss, "acc": baseline.acc, "ppl": math.exp(baseline.loss)}
        if task.bytes_per_token:
            values["bpb"] = baseline.loss / math.log(2) / task.bytes_per_token
        for kind, value in values.items():
            levels[f"val/{kind}{suffix}"] = {
                "value": value,
                "label": baseline.label,
                "how": baseline.how,
            }
    logged = set(module.val_metric_names())
    return {name: level for name, level in levels.items() if name in logged}


def flops_per_token(model: Any) -> float:
    """The model's forward FLOPs per token at its full length; NaN for a plugin mixer that does
    not count its FLOPs."""
    try:
        return model.flops_per_token(model.max_len)
    except NotImplementedError:
        return math.nan


class RunRecord(pl.Callback):
    """``results.json`` over a run's life, written by the global rank 0 process only.

    The run writes ``running`` before any work (:meth:`results` with what is known then), this
    callback rewrites it when training starts and after every validation (when checkpoints are
    saved), and the run writes the final status. Each write carries the process id, the host,
    the last optimiser step and the time, so a run that was killed without a word (``kill -9``,
    a lost node) shows up as ``running`` with a dead process and the step it reached.
    """

    def __init__(
        self, run_dir: Path, history: HistoryLogger, *, mixer: str, config: dict[str, Any]
    ) -> None:
        self.run_dir, self.history, self.mixer, self.config = run_dir, history, mixer, config
        self.budget: dict[str, Any] | None = None  # set by the run once its model is sized
        path = run_dir / RESULTS_FILE
        # the run's earlier record, as it was: what a resumed run continues (its W&B run)
        self.previous = path.read_bytes() if path.exists() else None
        self._wandb_run_id = None
        with contextlib.suppress(ValueError, AttributeError):  # unreadable: a new W&B run
            self._wandb_run_id = decode_record(self.previous or b"{}").get("wandb_run_id")

    def results(
        self,
        status: str,
        *,
        trainer: pl.Trainer | None = None,
        model: Any = None,
        error: str | None = None,
    ) -> RunResults:
        """The run's results as they stand; ``model`` is the SequenceModel once built."""
        callbacks = trainer.callbacks if trainer is not None else []
        monitor = next((cb for cb in callbacks if isinstance(cb, ThroughputMonitor)), None)
        checkpoint = trainer.checkpoint_callback if trainer is not None else None
        last = self.run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
        loggers = trainer.loggers if trainer is not None else []
        return RunResults(
            status=status,
            mixer=self.mixer,
            task=self.config["task"]["name"],
            seed=self.config["seed"],
            params=model.num_params() if model is not None else 0,
            flops_per_token=flops_per_token(model) if model is not None else math.nan,
            state_size=model.state_size(model.max_len) if model is not None else None,
            metrics=self.history.latest(),
            best=self.history.best(),
            tokens_per_s=monitor.tokens_per_s if monitor is not None else math.nan,
            wall_s=round(self.history.wall_s(), 3),
            wandb_run_id=next(
                (lg.version for lg in loggers if isinstance(lg, WandbLogger)), self._wandb_run_id
            ),
            checkpoints={
                "last": str(last) if last.exists() else None,
                "best": (checkpoint.best_model_path or None) if checkpoint else None,
            },
            config=self.config,
            error=error,
            chance=chance_levels(trainer),
            budget=self.budget,
            pid=os.getpid(),
            host=socket.gethostname(),
            last_step=trainer.global_step if trainer is not None else 0,
            updated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )

    @rank_zero_only
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.results("running", trainer=trainer, model=pl_module.model).write(self.run_dir)

    @rank_zero_only
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.results("running", trainer=trainer, model=pl_module.model).write(self.run_dir)
