"""The run's own logger: every logging event as one row of ``<run dir>/metrics.csv``, the curves
``mixerlab compare`` draws and the source of ``results.json``'s ``metrics`` and ``best``."""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor

from mixerlab.lightning_modules.metric_names import mode_of
from mixerlab.lightning_modules.record import HISTORY_FILE, write_atomic


class HistoryWriter:
    """The rows of a run's ``metrics.csv``: ``step``, a ``wall_s`` column after it, the other
    columns in the order metrics were first logged. Every row is kept in memory and the whole
    file rewritten atomically; an existing file is continued.

    Continuing (a resumed run): the wall clock goes on from the file's last row, and its rows
    stay up to the step this process logs first. Older rows at that step or later were logged
    after the checkpoint the run resumed from (the run was killed hard), or by a run that
    restarted from scratch: they are dropped, so every step appears once and ``best`` only sees
    the resumed lineage. (Lightning logs a step's metrics under the step's index, so a run
    resumed from a checkpoint at global step S logs steps >= S only.)
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / HISTORY_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.metrics: list[dict[str, float]] = []
        if self.path.exists():
            with self.path.open(newline="") as f:
                self.metrics = [
                    {k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)
                ]
        self._resumed = self.path.exists()
        self._start = time.perf_counter() - (self.metrics[-1]["wall_s"] if self.metrics else 0.0)

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
        write_atomic(self.path, out.getvalue())


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
        # made at once (it continues an existing file), and read through on every rank
        self._writer = HistoryWriter(self.log_dir)
        self._last_flush = time.perf_counter()
        self._unsaved_val_rows = False

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The :class:`HistoryWriter` (a dummy off rank 0, as for every Lightning logger)."""
        return self._writer

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
