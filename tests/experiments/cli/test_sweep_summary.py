"""The end-of-sweep summary: the folder, one line per job in job order, the command to run next."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from mixerlab.experiments.cli._sweep_summary import Sweep, sweep_report


def _job(sweep: Path, name: str, overrides: list[str], results: dict | None) -> None:
    (sweep / name / ".hydra").mkdir(parents=True)
    (sweep / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if results is not None:
        (sweep / name / "results.json").write_text(json.dumps(results))


def test_summary_lists_every_job_in_order_and_the_compare_command(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    finished = {"status": "finished", "best": {"val/acc": 0.9731}, "wall_s": 61.2, "error": None}
    failed = {"status": "failed", "best": {}, "wall_s": 3.0, "error": "RuntimeError: boom\nmore"}
    _job(sweep, "2_conv_mqar", ["mixer=conv", "seed=1", "experiment=mqar"], {**finished})
    _job(sweep, "0_attention_mqar", ["mixer=attention", "seed=0", "experiment=mqar"], failed)
    _job(sweep, "1_rnn_mqar", ["mixer=rnn", "experiment=mqar"], None)
    (sweep / "multirun.yaml").write_text("not a job\n")

    report = sweep_report(Sweep(sweep, "val/acc")).splitlines()

    assert report[0] == f"mixerlab: sweep of 3 job(s) in {sweep}"
    assert report[1] == "  every job: experiment=mqar"  # said once, not on every line
    report = report[1:]
    jobs = [line.split()[0] for line in report[1:] if line.split()[0][0].isdigit()]
    assert jobs == ["0_attention_mqar", "1_rnn_mqar", "2_conv_mqar"]
    text = "\n".join(report)
    assert "failed" in report[1] and report[1].endswith("mixer=attention seed=0")
    assert "RuntimeError: boom" in report[2] and "more" not in text  # the error's first line
    assert "no results.json" in report[3]
    assert "finished" in report[4] and "val/acc 0.9731" in report[4] and "61 s" in report[4]
    assert report[-1] == f"  next: mixerlab compare {sweep} --metric val/acc"


def test_summary_suggests_per_set_columns_when_runs_log_them(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    results = {"status": "finished", "best": {}, "metrics": {"val/acc@seq_len=64,kv=4": 0.5}}
    _job(sweep, "0_attention_mqar", ["mixer=attention"], results)
    assert sweep_report(Sweep(sweep, "val/acc")).endswith("--metric val/acc --also 'val/acc@*'")


def test_jobs_whose_config_check_removed_their_folder_are_listed_in_job_order(
    tmp_path: Path,
) -> None:
    """Hydra numbers jobs from 0; a job refused by its config check leaves no folder."""
    sweep = tmp_path / "sweep"
    for name in ("10_conv_mqar", "2_rnn_mqar"):
        _job(sweep, name, ["experiment=mqar", f"mixer={name.split('_')[1]}"], None)
    report = sweep_report(Sweep(sweep, "val/acc")).splitlines()
    assert report[0] == f"mixerlab: sweep of 11 job(s) in {sweep}"
    order = [line.split()[1] if line.startswith("  job ") else line.split()[0] for line in report]
    assert order[1:-1] == ["0", "1", "2_rnn_mqar", *map(str, range(3, 10)), "10_conv_mqar"]
    assert "no folder: its config was invalid (error above) or it was removed" in report[1]
    assert "every job" not in "\n".join(report)  # not said of jobs whose overrides are unknown
