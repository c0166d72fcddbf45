"""``results.json`` over a run's life (:class:`RunRecord`), with what the record takes from the
trainer: the task's chance levels, the model's accounting and the compute ledger (the machine and
threads each launch of the run trained on)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
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
    segments,
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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` says)."""
    with (
        contextlib.suppress(OSError),
        open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info,
    ):
        for line in info:
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def accelerator(trainer: pl.Trainer | None, config: dict[str, Any]) -> str:
    """``cpu``, or the name of the accelerator the run trains on (the CUDA device's name). Before
    the trainer exists: what ``trainer.accelerator`` would pick."""
    if trainer is not None:
        device = trainer.strategy.root_device
        if device.type == "cuda":
            return torch.cuda.get_device_name(device)
        return device.type
    wanted = str((config.get("trainer") or {}).get("accelerator", "auto"))
    if wanted in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"


def machine(trainer: pl.Trainer | None, config: dict[str, Any]) -> dict[str, Any]:
    """What a launch runs on, as the ledger records it (``MACHINE_KEYS`` of the record)."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "accelerator": accelerator(trainer, config),
        "platform": platform.platform(),
        "torch": torch.__version__,
    }


def earlier_segments(previous: dict[str, Any]) -> list[dict[str, Any]]:
    """The ledger of the record a resumed run continues. A record older than the ledger becomes
    one segment of its wall time on an unknown machine and thread count."""
    if "compute" in previous:
        return segments(previous["compute"])
    wall_s = previous.get("wall_s")
    if not isinstance(wall_s, (int, float)) or isinstance(wall_s, bool) or not wall_s > 0:
        return []
    return [
        {
            "host": previous.get("host"),
            "machine": None,
            "threads": None,
            "devices": None,
            "wall_s": wall_s,
            "from_step": 0,
            "to_step": previous.get("last_step"),
            "started_at": None,
        }
    ]


class RunRecord(pl.Callback):
    """``results.json`` over a run's life, written by the global rank 0 process only.

    The run writes ``running`` before any work (:meth:`results` with what is known then), this
    callback rewrites it when training starts and after every validation (when checkpoints are
    saved), and the run writes the final status. Each write carries the process id, the host,
    the last optimiser step and the time, so a run that was killed without a word (``kill -9``,
    a lost node) shows up as ``running`` with a dead process and the step it reached.

    Each write also brings this launch's segment of the ledger (``compute``) up to date: the
    record's earlier segments as they were (a resumed run, perhaps on another machine; those of an
    attempt the run restarted from scratch, ``discarded``), then this launch's machine, threads,
    devices, wall seconds since it started and steps.
    """

    def __init__(
        self,
        run_dir: Path,
        history: HistoryLogger,
        *,
        mixer: str,
        config: dict[str, Any],
        discarded: bytes | None = None,
    ) -> None:
        self.run_dir, self.history, self.mixer, self.config = run_dir, history, mixer, config
        self.budget: dict[str, Any] | None = None  # set by the run once its model is sized
        path = run_dir / RESULTS_FILE
        # the run's earlier record, as it was: what a resumed run continues (its W&B run)
        self.previous = path.read_bytes() if path.exists() else None
        self._wandb_run_id = None
        self._earlier: list[dict[str, Any]] = []
        with contextlib.suppress(ValueError, AttributeError):  # unreadable: a new W&B run
            previous = decode_record(self.previous or b"{}")
            self._wandb_run_id = previous.get("wandb_run_id")
            self._earlier = earlier_segments(previous)
        # an earlier attempt this run restarted from scratch (its checkpoint was not here): its
        # compute was spent all the same, so it stays in the ledger, marked discarded
        with contextlib.suppress(ValueError, AttributeError):
            abandoned = earlier_segments(decode_record(discarded)) if discarded else []
            self._earlier = [{**s, "discarded": True} for s in abandoned] + self._earlier
        self._launched = time.perf_counter()
        self._started_at = _now()
        self._from_step: int | None = None  # the step training starts from, once it starts

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
            updated_at=_now(),
            compute=[*self._earlier, self.segment(trainer)],
        )

    def segment(self, trainer: pl.Trainer | None) -> dict[str, Any]:
        """This launch's entry of the ledger (``SEGMENT_KEYS`` of the record), as it stands."""
        trainer_config = self.config.get("trainer") or {}
        devices = trainer.num_devices if trainer is not None else trainer_config.get("devices")
        return {
            "host": socket.gethostname(),
            "machine": machine(trainer, self.config),
            "threads": torch.get_num_threads(),
            "devices": devices if isinstance(devices, int) else 1,
            "wall_s": round(time.perf_counter() - self._launched, 3),
            "from_step": self._from_step,
            "to_step": trainer.global_step if trainer is not None else self._from_step,
            "started_at": self._started_at,
        }

    @rank_zero_only
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._from_step = trainer.global_step  # restored from the checkpoint a resume loads
        self.results("running", trainer=trainer, model=pl_module.model).write(self.run_dir)

    @rank_zero_only
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.results("running", trainer=trainer, model=pl_module.model).write(self.run_dir)
