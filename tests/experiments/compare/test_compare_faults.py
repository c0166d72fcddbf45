"""``mixerlab compare`` with runs that went wrong: runs of several tasks are never averaged
together, running/killed/diverged runs are listed apart, and an unreadable or wrongly shaped
results.json is named by path while the report goes on for the rest."""

from __future__ import annotations

import json
import math
import os
import random
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from run_folders import read_csv, two_by_two, write_run

from mixerlab.experiments.cli.compare import main
from mixerlab.experiments.compare import outputs
from mixerlab.experiments.compare.plots import base
from mixerlab.experiments.compare.runs import load_runs
from mixerlab.lightning_modules.record import FIELDS, shape_problem


@pytest.fixture(autouse=True)
def tables_only(monkeypatch, tmp_path):
    """Wide terminal, no PNGs, and run names relative to ``tmp_path`` (short table cells)."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(base, "_REGISTRY", {})
    monkeypatch.setattr(outputs, "metric_figures", lambda comparison: {})
    monkeypatch.chdir(tmp_path)


def edit(run: Path, **fields: Any) -> None:
    """Change top-level fields of a run's results.json."""
    path = run / "results.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def of_task(run: Path, task: str) -> Path:
    data = json.loads((run / "results.json").read_text())
    data["config"]["task"]["name"] = task
    edit(run, task=task, config=data["config"])
    return run


def md_section(out: Path, heading: str) -> str:
    return (out / "comparison.md").read_text().split(f"## {heading}")[1].split("\n## ")[0]


def test_runs_of_several_tasks_are_grouped_by_task_with_a_warning(tmp_path, capsys):
    two_by_two(tmp_path / "runs")  # mqar: attention 1.1, rnn 2.25
    for name, mixer, seed, loss in [("ta0", "attention", 0, 3.0), ("tr0", "rnn", 0, 0.5)]:
        of_task(write_run(tmp_path / "runs", name, mixer=mixer, seed=seed, loss=loss), "text")
    out = tmp_path / "out"
    assert main(["runs", "--out", str(out)]) == 0
    rows = [(r["task"], r["mixer"], r["n"]) for r in read_csv(out / "comparison.csv")]
    # each task's groups together, best first within it; no row mixes tasks
    assert rows == [
        ("mqar", "attention", "2"),
        ("mqar", "rnn", "2"),
        ("text", "rnn", "1"),
        ("text", "attention", "1"),
    ]
    terminal = capsys.readouterr().out
    assert "2 tasks (mqar, text): grouped by task too (--by task,mixer)" in terminal
    # the user's own task key: no warning, and still no cross-task mean
    assert main(["runs", "--out", str(out), "--by", "mixer,task.name"]) == 0
    assert "grouped by task too" not in capsys.readouterr().out
    assert {r["n"] for r in read_csv(out / "comparison.csv")} == {"1", "2"}


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def test_running_killed_and_diverged_runs_are_listed_apart(tmp_path, capsys):
    root = tmp_path / "runs"
    two_by_two(root)
    here, an_hour_ago = socket.gethostname(), datetime.now(timezone.utc) - timedelta(hours=1)
    started = {"status": "running", "last_step": 40, "updated_at": an_hour_ago.isoformat()}
    live = write_run(root, "live", mixer="gmlp", seed=0, loss=0.1)
    edit(live, **started, pid=os.getpid(), host=here)
    dead = write_run(root, "dead", mixer="gmlp", seed=1, loss=0.1)
    edit(dead, **started, pid=_dead_pid(), host=here)
    remote = write_run(root, "remote", mixer="gmlp", seed=2, loss=0.1)
    edit(remote, **started, pid=_dead_pid(), host="node-elsewhere")  # not checkable from here
    nan = write_run(root, "nan", mixer="rnn", seed=3, loss=0.1, status="diverged")
    edit(nan, last_step=12, error="train/loss is nan at step 12")
    write_run(root, "int", mixer="rnn", seed=4, loss=0.1, status="interrupted")
    out = tmp_path / "out"
    assert main(["runs", "--out", str(out)]) == 0
    rows = {r["mixer"]: r["n"] for r in read_csv(out / "comparison.csv")}
    assert rows == {"attention": "2", "rnn": "2"}  # none of them in the table
    section = md_section(out, "Failed and unfinished runs")
    lines = {line.split(" | ")[0].strip("| "): line for line in section.splitlines()}
    assert (
        "| running |" in lines["runs/live"] and f"pid {os.getpid()} on {here}" in lines["runs/live"]
    )
    assert "| 40 |" in lines["runs/live"] and "last update 1 h ago" in lines["runs/live"]
    assert "| killed |" in lines["runs/dead"] and "is gone from this machine" in lines["runs/dead"]
    assert "| running |" in lines["runs/remote"] and "on node-elsewhere" in lines["runs/remote"]
    assert "| diverged |" in lines["runs/nan"] and "| 12 |" in lines["runs/nan"]
    assert "train/loss is nan at step 12" in lines["runs/nan"]
    assert "| interrupted |" in lines["runs/int"]
    terminal = capsys.readouterr().out
    assert "killed" in terminal and "diverged" in terminal and "running" in terminal


BAD_FILES = {
    "truncated": '{"status": "finished", "mixer": "rnn", "best": {"val/lo',
    "empty": "",
    "not utf-8": b"\xff\xfe\x00garbage",
    "a list": "[1, 2, 3]",
    "a number": "3",
    "nested too deep": "[" * 100_000 + "]" * 100_000,
    "best a list": '{"status": "finished", "mixer": "rnn", "best": [1.0]}',
    "best a string value": '{"status": "finished", "best": {"val/loss": "low"}}',
    "params a string": '{"status": "finished", "params": "many"}',
    "config a string": '{"status": "finished", "config": "mixer=rnn"}',
    "chance a list": '{"status": "finished", "chance": [0.5]}',
    "history a number": '{"status": "finished", "history": 3}',
    "status an object": '{"status": {"done": true}}',
    "pid a string": '{"status": "running", "pid": "1234"}',
}


def test_unreadable_run_folders_are_named_and_the_rest_is_reported(tmp_path, capsys):
    root = tmp_path / "runs"
    two_by_two(root)
    for index, content in enumerate(BAD_FILES.values()):
        (root / f"bad{index}").mkdir()
        path = root / f"bad{index}" / "results.json"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "out"
    assert main(["runs", "--out", str(out)]) == 0
    assert {r["mixer"]: r["n"] for r in read_csv(out / "comparison.csv")} == {
        "attention": "2",
        "rnn": "2",
    }
    section = md_section(out, "Unreadable runs (left out)")
    for index, name in enumerate(BAD_FILES):
        assert f"| runs/bad{index}/results.json |" in section, name
    assert "not valid JSON" in section and "holds a JSON array" in section
    assert "has a JSON array for 'best', where objects belong" in section
    assert "has a JSON string for best['val/loss'], not a number" in section
    assert "Unreadable runs" in (out / "report.html").read_text()
    assert "unreadable runs" in capsys.readouterr().out


def test_only_unreadable_files_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{oops")
    assert main(["run"]) == 2
    error = capsys.readouterr().err
    assert "none of the 1 results.json can be used" in error
    assert "run/results.json is not valid JSON" in error


def test_a_real_results_shape_passes_and_each_wrong_type_is_named(tmp_path):
    results = json.loads(
        (write_run(tmp_path, "ok", mixer="rnn", seed=0, loss=1) / "results.json").read_text()
    )
    results.update(pid=12, host="h", last_step=0, updated_at="2026-01-01T00:00:00+00:00")
    results["best"]["val/loss"] = float("nan")  # a diverged value is still a number
    assert shape_problem(results) is None
    assert shape_problem({}) is None  # missing fields are compared as before
    wrong = {"string": 1, "integer": 1.5, "number": "1", "object": [1], "array": {}}
    for name, expected in FIELDS.items():
        problem = shape_problem({**results, name: wrong[expected]})
        assert problem is not None and repr(name) in problem, name
    assert "boolean" in shape_problem({**results, "seed": True})


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["null", "bool", "int", "float", "str"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "dict":
        keys = ["val/loss", "name", "lr", "x", *FIELDS]
        return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    return TYPED.get(kind, lambda rng: rng.choice([None, True, False]))(rng)


# Values of each JSON type, odd ones included: the shape check lets them through, so the
# comparison itself must cope.
TYPED = {
    "str": lambda rng: rng.choice(["", "finished", "running", "diverged", "[x]", "é", "../a"]),
    "int": lambda rng: rng.choice([0, -1, 1, 12, 2**63]),
    "float": lambda rng: rng.choice([0.0, -1.5, math.nan, math.inf, 1e308]),
}
TYPED |= {"string": TYPED["str"], "integer": TYPED["int"], "number": TYPED["float"]}


def _well_typed(rng: random.Random, name: str) -> Any:
    """A random value of the type results.json allows for field ``name``."""
    if name in ("best", "metrics"):
        return {"val/loss": TYPED["float"](rng), rng.choice(["val/acc", "x"]): rng.random()}
    if FIELDS[name] == "object":
        return {rng.choice(["optim", "task", "lr"]): _random_json(rng, 1) for _ in range(3)}
    if FIELDS[name] == "array":  # the ledger's segments, their fields odd values of any type
        keys = ["wall_s", "threads", "devices", "machine", "host"]
        return [{rng.choice(keys): _random_json(rng, 2) for _ in range(3)} for _ in range(2)]
    return TYPED[FIELDS[name]](rng)


def test_randomly_damaged_results_never_stop_the_report(tmp_path, capsys):
    """A hand-rolled fuzz, 60 runs: fields of real results replaced by random JSON (unreadable
    runs) or by odd values of the right type (readable ones, which the comparison must take);
    compare still writes the report with the intact runs' rows."""
    root = tmp_path / "runs"
    two_by_two(root)
    rng = random.Random(0)
    for index in range(60):
        run = write_run(root, f"fuzz{index}", mixer="rnn", seed=10 + index, loss=9.0)
        data = json.loads((run / "results.json").read_text())
        typed = index % 2 == 0
        for name in rng.sample(sorted(FIELDS), 3):
            data[name] = _well_typed(rng, name) if typed else _random_json(rng)
        if typed and rng.random() < 0.5:  # odd config values too, e.g. the learning rate
            data["config"] = {**data["config"], "optim": {"lr": _random_json(rng)}}
        (run / "results.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    assert main(["runs", "--out", str(out)]) == 0
    runs = load_runs([root])
    assert len(runs) == 64 and sum(run.problem is None for run in runs) >= 34
    assert {"attention", "rnn"} <= {r["mixer"] for r in read_csv(out / "comparison.csv")}
    capsys.readouterr()
