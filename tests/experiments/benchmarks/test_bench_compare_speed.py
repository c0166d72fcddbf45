"""``mixerlab compare`` over a hundred runs (20 groups, four validation sets, 300-row histories)
gives the right table and a report with every metric; how long it takes is a benchmark,
``python -m mixerlab.experiments.benchmarks.compare_speed``, not a timed test."""

from __future__ import annotations

import csv

import pytest

from mixerlab.experiments.benchmarks.compare_speed import (
    LRS,
    MIXERS,
    VAL_SETS,
    compare_sweep,
    fabricate_sweep,
)


@pytest.mark.slow  # about 15 s on 2 busy cores
def test_a_hundred_runs_compare_into_twenty_rows_and_every_metric(tmp_path, capsys):
    fabricate_sweep(tmp_path / "sweep")
    code, _ = compare_sweep(tmp_path / "sweep", tmp_path / "out")
    assert code == 0
    with (tmp_path / "out" / "comparison.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(MIXERS) * len(LRS) and {row["n"] for row in rows} == {"5"}
    report = (tmp_path / "out" / "report.html").read_text()
    for metric in ("train/loss", "val/ppl", *(f"val/acc@{name}" for name in VAL_SETS)):
        assert f"<figure data-metric='{metric}'>" in report
    assert "warning" not in capsys.readouterr().out
