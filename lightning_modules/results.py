"""What a run leaves behind for ``mixerlab compare``: ``metrics.csv`` (curves) and ``results.json``.

Both are rewritten atomically (tmp file + ``os.replace``), so a reader never sees half a file,
even while the run is still writing or after it was killed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities import rank_zero_only

from lightning_modules.io import write_atomic
from lightning_modules.metric_names import higher_is_better

HISTORY_FILE = "metrics.csv"
RESULTS_FILE = "results.json"


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf: a diverged metric becomes null rather than an unreadable file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class HistoryLogger(Logger):
    """Every logging event as one row of ``metrics.csv``: ``step``, ``wall_s``, the metrics.

    Rows are kept in memory and the file is rewritten at most every ``flush_every_s`` seconds and
    after every validation, because columns appear as new metrics are first logged (val metrics
    only after the first validation) and a CSV header cannot grow in place. An existing file
    (a resumed run) is continued: its wall clock goes on from its last row, and its rows stay
    up to the step this process logs first. Older rows at that step or later were logged after
    the checkpoint the run resumed from (the run was killed hard), or by a run that restarted
    from scratch: they are dropped, so every step appears once and ``best`` only sees the
    resumed lineage. (Lightning logs a step's metrics under the step's index, so a run resumed
    from a checkpoint at global step S logs steps >= S only.)
    """

    def __init__(self, run_dir: str | Path, flush_every_s: float = 5.0) -> None:
        super().__init__()
        self.path = Path(run_dir) / HISTORY_FILE
        self.flush_every_s = flush_every_s
        self.rows: list[dict[str, float]] = []
        self._resumed = self.path.exists()
        if self._resumed:
            with self.path.open(newline="") as f:
                self.rows = [
                    {k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)
                ]
        previous_wall = self.rows[-1]["wall_s"] if self.rows else 0.0
        self._start = time.perf_counter() - previous_wall
        self._last_flush = time.perf_counter()

    @property
    def name(self) -> str:
        return "history"

    @property
    def version(self) -> str:
        return ""

    def wall_s(self) -> float:
        """Seconds since the run started, resumed segments included."""
        return time.perf_counter() - self._start

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Nothing to do: the resolved config is stored in results.json."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        row = {"step": float(step or 0), "wall_s": round(self.wall_s(), 3)}
        if self._resumed:  # the first row of a resumed run: drop the old rows it supersedes
            self._resumed = False
            self.rows = [old for old in self.rows if old["step"] < row["step"]]
        row.update({k: float(v) for k, v in metrics.items() if k != "epoch"})
        self.rows.append(row)
        now = time.perf_counter()
        if now - self._last_flush >= self.flush_every_s or any(k.startswith("val/") for k in row):
            self.save()

    @rank_zero_only
    def save(self) -> None:
        columns = ["step", "wall_s"]
        for row in self.rows:
            columns.extend(k for k in row if k not in columns)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: _csv_value(k, v) for k, v in row.items()})
        write_atomic(self.path, out.getvalue())
        self._last_flush = time.perf_counter()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()

    def latest(self) -> dict[str, float]:
        """The last logged value of every metric."""
        values: dict[str, float] = {}
        for row in self.rows:
            values.update({k: v for k, v in row.items() if k not in ("step", "wall_s")})
        return values

    def best(self) -> dict[str, float]:
        """The best value of every validation metric over the run (min, or max for accuracy)."""
        best: dict[str, float] = {}
        for row in self.rows:
            for key, value in row.items():
                if not key.startswith("val/") or math.isnan(value):
                    continue
                pick = max if higher_is_better(key) else min
                best[key] = pick(best.get(key, value), value)
        return best


def _csv_value(key: str, value: float) -> int | float:
    return int(value) if key == "step" else value


@dataclass
class RunResults:
    """The fields of ``results.json``, the contract ``mixerlab compare`` reads."""

    status: str  # finished | failed | interrupted
    mixer: str
    task: str
    seed: int
    params: int
    flops_per_token: float
    metrics: dict[str, float]
    best: dict[str, float]
    tokens_per_s: float
    wall_s: float
    wandb_run_id: str | None
    checkpoints: dict[str, str | None]
    config: dict[str, Any]
    error: str | None
    history: str = HISTORY_FILE

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
