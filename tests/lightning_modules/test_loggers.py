"""metrics.csv: the history logger rewrites it atomically and continues it on resume."""

from __future__ import annotations

import csv
from pathlib import Path

from pytorch_lightning.loggers import CSVLogger

from mixerlab.lightning_modules.loggers import HistoryLogger


def test_history_logger_rewrites_atomically_and_continues(tmp_path: Path) -> None:
    history = HistoryLogger(tmp_path)
    assert isinstance(history, CSVLogger)
    history.log_metrics({"train/loss": 2.0}, step=0)
    history.log_metrics({"val/loss": 1.5, "val/acc": 0.2}, step=1)  # val rows flush at once
    history.log_metrics({"val/loss": 1.7, "val/acc": 0.4}, step=2)
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:2] == ["step", "wall_s"] and len(rows) == 3
    assert history.best() == {"val/loss": 1.5, "val/acc": 0.4}
    assert history.latest()["val/loss"] == 1.7
    resumed = HistoryLogger(tmp_path)
    assert len(resumed.rows) == 3 and resumed.wall_s() >= float(rows[-1]["wall_s"])
    assert not list(tmp_path.glob(".*.tmp"))


def test_history_logger_drops_rows_past_the_resumed_checkpoint(tmp_path: Path) -> None:
    history = HistoryLogger(tmp_path)
    for step in range(6):
        history.log_metrics({"train/loss": 2.0}, step=step)
    history.log_metrics({"val/loss": 0.5}, step=5)
    # killed hard after step 6; the next process resumes from a checkpoint at global step 3
    resumed = HistoryLogger(tmp_path)
    for step in (3, 4):
        resumed.log_metrics({"train/loss": 1.0}, step=step)
    assert [row["step"] for row in resumed.rows] == [0, 1, 2, 3, 4]
    assert resumed.best() == {} and resumed.latest() == {"train/loss": 1.0}
    resumed.flush()
    with (tmp_path / "metrics.csv").open() as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [0, 1, 2, 3, 4]
