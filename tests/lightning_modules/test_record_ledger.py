"""The compute ledger of results.json: one segment per launch of a run, what it cost in core- and
GPU-hours, records older than the ledger still read, and the run record keeping it up to date."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from mixerlab.lightning_modules.callbacks.run_record import RunRecord
from mixerlab.lightning_modules.loggers import HistoryLogger
from mixerlab.lightning_modules.record import (
    FIELDS,
    MACHINE_KEYS,
    SEGMENT_KEYS,
    RunResults,
    core_hours,
    gpu_hours,
    read_results,
    shape_problem,
    unknown_wall_hours,
)

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_runs"


def segment(wall_s: Any, threads: Any = 2, accelerator: str = "cpu", devices: Any = 1) -> dict:
    machine = {"cpu": "Test CPU", "cores": 8, "accelerator": accelerator, "platform": "Linux"}
    return {
        "host": "h", "machine": {**machine, "torch": "2.0"}, "threads": threads,
        "devices": devices, "wall_s": wall_s, "from_step": 0, "to_step": 10,
        "started_at": "2026-01-01T00:00:00+00:00",
    }  # fmt: skip


def results(**fields: Any) -> RunResults:
    return RunResults(
        status="finished", mixer="rnn", task="mqar", seed=0, params=1, flops_per_token=2.0,
        metrics={}, best={}, tokens_per_s=1.0, wall_s=1.0, wandb_run_id=None,
        checkpoints={"last": None, "best": None}, config={}, error=None, **fields,
    )  # fmt: skip


def test_the_ledger_round_trips_with_its_segments(tmp_path: Path) -> None:
    launches = [segment(3600.0, threads=2), segment(1800.0, accelerator="NVIDIA H100", devices=4)]
    written = results(compute=launches)
    written.write(tmp_path)
    data = read_results(tmp_path)
    assert data["compute"] == launches and shape_problem(data) is None
    assert written.core_hours() == 2.0 and written.gpu_hours() == 2.0  # 1 h x 2; 0.5 h x 4
    assert core_hours(data["compute"]) == 2.0 and gpu_hours(data["compute"]) == 2.0
    assert unknown_wall_hours(data) == 0.0


@pytest.mark.parametrize("path", sorted(LEGACY.rglob("results.json")), ids=lambda p: p.parent.name)
def test_records_older_than_the_ledger_still_read(path: Path) -> None:
    data = json.loads(path.read_text())
    assert "compute" not in data and shape_problem(data) is None
    record = RunResults(**{key: value for key, value in data.items() if key in FIELDS})
    assert record.compute == [] and record.core_hours() == 0.0 and record.gpu_hours() == 0.0
    assert unknown_wall_hours(data) == pytest.approx(data["wall_s"] / 3600)


def test_core_hours_count_threads_and_take_damaged_segments_as_unknown() -> None:
    launches = [
        segment(1800.0, threads=4),  # 2 core-hours
        segment(900.0, threads=1),  # 0.25
        segment(7200.0, threads=None),  # carried over from an old record: threads unknown
        segment(math.nan, threads=2),  # damaged numbers count nothing
        segment("1h", threads=True),
        segment(3600.0, accelerator="NVIDIA A100", devices=2),  # GPU-hours, not core-hours
        "not a segment",
    ]
    assert core_hours(launches) == pytest.approx(2.25)
    assert gpu_hours(launches) == pytest.approx(2.0)
    assert unknown_wall_hours({"compute": launches, "wall_s": 99.0}) == pytest.approx(2.0)
    assert core_hours(None) == core_hours("x") == gpu_hours([]) == 0.0
    assert "compute[1]" in shape_problem({"compute": [segment(1.0), 3]})


def _record(run_dir: Path) -> RunRecord:
    config = {"task": {"name": "mqar"}, "seed": 0, "trainer": {"accelerator": "cpu", "devices": 1}}
    return RunRecord(run_dir, HistoryLogger(run_dir), mixer="rnn", config=config)


def test_each_launch_adds_a_segment_that_says_where_it_ran(tmp_path: Path) -> None:
    first = _record(tmp_path).results("running")
    (launch,) = first.compute
    assert tuple(launch) == SEGMENT_KEYS and tuple(launch["machine"]) == MACHINE_KEYS
    assert launch["threads"] == torch.get_num_threads() and launch["devices"] == 1
    assert launch["machine"]["accelerator"] == "cpu" and launch["machine"]["cpu"]
    assert launch["wall_s"] >= 0 and launch["started_at"]
    earlier = {**launch, "host": "elsewhere", "wall_s": 12.5, "from_step": 0, "to_step": 30}
    results(compute=[earlier]).write(tmp_path)  # the record a resumed run finds
    resumed = _record(tmp_path).results("running")
    assert len(resumed.compute) == 2 and resumed.compute[0] == earlier
    assert resumed.compute[1]["host"] == launch["host"] and resumed.compute[1]["wall_s"] < 12.5


def test_a_resumed_record_older_than_the_ledger_keeps_its_wall_time_as_unknown(
    tmp_path: Path,
) -> None:
    old = json.loads((LEGACY / "short_run" / "results.json").read_text())
    (tmp_path / "results.json").write_text(json.dumps(old))
    carried, launch = _record(tmp_path).results("running").compute
    assert carried["wall_s"] == old["wall_s"] and carried["threads"] is None
    assert carried["machine"] is None and carried["to_step"] == old["last_step"]
    assert launch["threads"] == torch.get_num_threads()
