"""What the compared runs cost: ``mixerlab compare`` adds up their ledgers (core-hours from
threads, GPU-hours from devices, the machines) under the table, in comparison.md and
report.html, and names the runs older than the ledger with their wall time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from run_folders import write_run

from mixerlab.experiments.cli.compare import main
from mixerlab.experiments.compare import outputs
from mixerlab.experiments.compare.ledger import ledger_lines, runs_spent
from mixerlab.experiments.compare.plots import base
from mixerlab.experiments.compare.runs import load_runs


@pytest.fixture(autouse=True)
def tables_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Wide terminal, no PNGs."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(base, "_REGISTRY", {})
    monkeypatch.setattr(outputs, "metric_figures", lambda comparison: {})
    monkeypatch.chdir(tmp_path)


def launch(wall_s: float, threads: int | None = 2, cpu: str = "EPYC", gpu: str | None = None):
    machine = {"cpu": cpu, "cores": 16, "accelerator": gpu or "cpu", "platform": "Linux"}
    return {
        "host": "h", "machine": {**machine, "torch": "2.5"}, "threads": threads, "devices": 1,
        "wall_s": wall_s, "from_step": 0, "to_step": 30, "started_at": None,
    }  # fmt: skip


def with_ledger(run: Path, *launches: dict[str, Any]) -> Path:
    path = run / "results.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "compute": list(launches)}))
    return run


def runs(root: Path) -> None:
    """A run of 1 h on 2 threads; a run resumed on another machine (0.5 h on 4 threads, then 1 h
    on a GPU) that failed; a run older than the ledger, 0.4 h."""
    with_ledger(write_run(root, "a0", mixer="attention", seed=0, loss=1.0), launch(3600.0))
    failed = write_run(root, "r0", mixer="rnn", seed=0, loss=2.0, status="failed", error="boom")
    with_ledger(failed, launch(1800.0, threads=4, cpu="Xeon"), launch(3600.0, gpu="NVIDIA H100"))
    write_run(root, "a1", mixer="attention", seed=1, loss=1.2, wall_s=1440.0)


def test_the_ledger_adds_core_and_gpu_hours_and_names_runs_without_one(tmp_path: Path) -> None:
    runs(tmp_path / "runs")
    ledger = runs_spent(load_runs([tmp_path / "runs"]))
    assert ledger.runs == 3 and ledger.wall_hours == pytest.approx(1 + 0.5 + 1 + 0.4)
    assert ledger.core_hours == pytest.approx(2 * 1 + 4 * 0.5) and ledger.gpu_hours == 1.0
    assert ledger.unledgered == 1 and ledger.unledgered_wall_hours == pytest.approx(0.4)
    assert ledger_lines(ledger) == [
        "3 runs: 2.9 wall-hours, 4 core-hours, 1 GPU-hours",
        "EPYC x 2 threads: 1 launch, 2 core-hours",
        "Xeon x 4 threads: 1 launch, 2 core-hours",
        "NVIDIA H100 x 1 device: 1 launch, 1 GPU-hours",
        "1 run without a ledger: 0.4 wall-hours (threads unknown, not in the core-hours)",
    ]


def test_compare_prints_the_ledger_under_its_table_and_writes_it(tmp_path: Path, capsys) -> None:
    runs(tmp_path / "runs")
    assert main(["runs", "--out", "out"]) == 0
    printed = capsys.readouterr().out
    assert "compute spent 3 runs: 2.9 wall-hours, 4 core-hours, 1 GPU-hours" in printed
    assert printed.index("compute spent") > printed.index("tokens/s")  # under the table
    assert "  1 run without a ledger: 0.4 wall-hours" in printed
    markdown = (tmp_path / "out" / "comparison.md").read_text()
    assert "## Compute spent\n\n- 3 runs: 2.9 wall-hours, 4 core-hours, 1 GPU-hours\n" in markdown
    assert "- EPYC x 2 threads: 1 launch, 2 core-hours" in markdown
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<h2>Compute spent</h2>" in html and "Xeon x 4 threads: 1 launch" in html


def test_runs_that_all_predate_the_ledger_say_so(tmp_path: Path, capsys) -> None:
    for seed in (0, 1, 2):
        write_run(tmp_path / "runs", f"a{seed}", mixer="rnn", seed=seed, loss=1.0, wall_s=480.0)
    assert main(["runs", "--out", "out"]) == 0
    printed = capsys.readouterr().out
    assert "compute spent 3 runs: 0.4 wall-hours, core-hours unknown" in printed
    assert "3 runs without a ledger: 0.4 wall-hours" in printed
