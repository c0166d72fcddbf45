"""What a run leaves behind for ``mixerlab compare``: ``metrics.csv`` (curves) and ``results.json``.

Both are rewritten atomically (tmp file + ``os.replace``), so a reader never sees half a file,
even while the run is still writing or after it was killed. ``results.json`` exists from the
start of a run (:class:`RunRecord`): ``running``, with the process id, host and last step, until
the run ends ``finished``, ``failed``, ``interrupted`` or ``diverged``; a run killed hard keeps
saying ``running`` with a process that no longer exists. It also records the
task's chance levels under the validation metrics' names (:func:`chance_levels`), so the
comparison can draw them without importing the task.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor

from mixerlab.lightning_modules.callbacks import ThroughputMonitor
from mixerlab.lightning_modules.io import write_atomic
from mixerlab.lightning_modules.metric_names import mode_of

log = logging.getLogger(__name__)

HISTORY_FILE = "metrics.csv"
RESULTS_FILE = "results.json"
CHECKPOINT_DIR = "checkpoints"  # last.ckpt, best.ckpt


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf: a diverged metric becomes null rather than an unreadable file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class HistoryWriter(ExperimentWriter):
    """Lightning's CSV experiment writer with what a run's ``metrics.csv`` adds: a ``wall_s``
    column after ``step``, the other columns in the order metrics were first logged, every row
    kept in memory and the whole file rewritten atomically, and an existing file continued.

    Continuing (a resumed run): the wall clock goes on from the file's last row, and its rows
    stay up to the step this process logs first. Older rows at that step or later were logged
    after the checkpoint the run resumed from (the run was killed hard), or by a run that
    restarted from scratch: they are dropped, so every step appears once and ``best`` only sees
    the resumed lineage. (Lightning logs a step's metrics under the step's index, so a run
    resumed from a checkpoint at global step S logs steps >= S only.)
    """

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        path = Path(self.metrics_file_path)
        if path.exists():
            with path.open(newline="") as f:
                self.metrics = [
                    {k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)
                ]
        self._resumed = path.exists()
        self._start = time.perf_counter() - (self.metrics[-1]["wall_s"] if self.metrics else 0.0)

    def _check_log_dir_exists(self) -> None:
        """Lightning deletes an existing metrics.csv here; a resumed run continues it instead."""

    def wall_s(self) -> float:
        """Seconds since the run started, resumed segments included."""
        return time.perf_counter() - self._start

    def log_metrics(self, metrics_dict: dict[str, float | Tensor], step: int | None = None) -> None:
        row = {"step": float(len(self.metrics) if step is None else step)}
        row["wall_s"] = round(self.wall_s(), 3)
        if self._resumed:  # the first row of a resumed run: drop the old rows it supersedes
            self._resumed = False
            self.metrics = [old for old in self.metrics if old["step"] < row["step"]]
        row.update({k: float(v) for k, v in metrics_dict.items() if k != "epoch"})
        self.metrics.append(row)

    def save(self) -> None:
        columns = ["step", "wall_s"]
        for row in self.metrics:
            columns.extend(k for k in row if k not in columns)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in self.metrics:
            writer.writerow({k: int(v) if k == "step" else v for k, v in row.items()})
        write_atomic(Path(self.metrics_file_path), out.getvalue())


class HistoryLogger(CSVLogger):
    """Lightning's CSVLogger writing every logging event as one row of ``<run dir>/metrics.csv``:
    ``step``, ``wall_s``, the metrics (see :class:`HistoryWriter`).

    The file is rewritten at most every ``flush_every_s`` seconds and after every validation
    (Lightning's save after each logging event only writes then), because columns appear as new
    metrics are first logged (val metrics only after the first validation) and a CSV header
    cannot grow in place. ``wall_s`` counts from this logger's creation (the run's start).
    """

    def __init__(self, run_dir: str | Path, flush_every_s: float = 5.0) -> None:
        super().__init__(run_dir, name="", version="")
        self.flush_every_s = flush_every_s
        # made at once, and read through on every rank (``experiment`` is a dummy off rank 0)
        self._writer = HistoryWriter(self.log_dir)
        self._experiment = self._writer
        self._last_flush = time.perf_counter()
        self._unsaved_val_rows = False

    @rank_zero_only
    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to do: the resolved config is stored in results.json."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float | Tensor], step: int | None = None) -> None:
        self._writer.log_metrics(metrics, step)
        self._unsaved_val_rows |= any(k.startswith("val/") for k in metrics)
        self.save()

    @rank_zero_only
    def save(self) -> None:
        if self._unsaved_val_rows or time.perf_counter() - self._last_flush >= self.flush_every_s:
            self.flush()

    @rank_zero_only
    def flush(self) -> None:
        """Write metrics.csv now."""
        self._writer.save()
        self._last_flush = time.perf_counter()
        self._unsaved_val_rows = False

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.flush()

    @property
    def rows(self) -> list[dict[str, float]]:
        return self._writer.metrics

    def wall_s(self) -> float:
        """Seconds since the run started, resumed segments included."""
        return self._writer.wall_s()

    def latest(self) -> dict[str, float]:
        """The last logged value of every metric."""
        values: dict[str, float] = {}
        for row in self.rows:
            values.update({k: v for k, v in row.items() if k not in ("step", "wall_s")})
        return values

    def best(self) -> dict[str, float]:
        """The best value of every validation metric over the run (see ``mode_of``)."""
        best: dict[str, float] = {}
        for row in self.rows:
            for key, value in row.items():
                if not key.startswith("val/") or math.isnan(value):
                    continue
                pick = max if mode_of(key) == "max" else min
                best[key] = pick(best.get(key, value), value)
        return best


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


@dataclass
class RunResults:
    """The fields of ``results.json``, the contract ``mixerlab compare`` reads."""

    status: str  # running | finished | failed | interrupted | diverged
    mixer: str
    task: str
    seed: int
    params: int
    flops_per_token: float
    metrics: dict[str, float]
    best: dict[str, float]
    tokens_per_s: float  # training tokens per second, averaged over the run
    wall_s: float
    wandb_run_id: str | None
    checkpoints: dict[str, str | None]
    config: dict[str, Any]
    error: str | None
    history: str = HISTORY_FILE
    # what learning nothing scores, by metric: {"value", "label", "how"} (see chance_levels)
    chance: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the model.budget the model was sized to, as mixerlab.experiments.budget solved it: measure,
    # target, reached, solved_for, value (the d_model or ffn_mult it gave), tolerance; None: no
    # budget
    budget: dict[str, Any] | None = None
    state_size: int | None = None  # floats of decoding state per sequence at max_len
    # who wrote this and how far it got: a `running` run whose process is gone was killed
    pid: int | None = None
    host: str | None = None
    last_step: int = 0
    updated_at: str | None = None  # ISO 8601, UTC

    def write(self, run_dir: str | Path) -> Path:
        """Write ``<run_dir>/results.json`` atomically; returns its path."""
        payload = asdict(self)
        for key in ("metrics", "best"):
            payload[key] = {k: _finite_or_none(v) for k, v in payload[key].items()}
        for key in ("tokens_per_s", "flops_per_token"):
            payload[key] = _finite_or_none(payload[key])
        path = Path(run_dir) / RESULTS_FILE
        write_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")
        return path


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
            self._wandb_run_id = json.loads(self.previous or "{}").get("wandb_run_id")

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
        last = self.run_dir / CHECKPOINT_DIR / "last.ckpt"
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
