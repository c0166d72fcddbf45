"""mixerlab compare on synthetic run directories (results.json + metrics.csv), no training: the
aggregation, the tables and the command line. Curves and plots are in test_compare_plots.py."""

from __future__ import annotations

import html
import json
import math
import os
import statistics
import subprocess
import sys
from dataclasses import FrozenInstanceError
from datetime import datetime

import pytest
from run_folders import read_csv, two_by_two, write_run

from mixerlab.experiments.cli.compare import main
from mixerlab.experiments.compare import outputs
from mixerlab.experiments.compare.aggregate import build_comparison
from mixerlab.experiments.compare.plots import base
from mixerlab.experiments.compare.runs import load_runs


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    """rich wraps to 80 columns when not on a terminal; the checks read whole cells."""
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture(autouse=True)
def without_plots(monkeypatch):
    """These tests read tables, never PNGs (test_compare_plots.py checks those): seconds saved."""
    monkeypatch.setattr(base, "_REGISTRY", {})
    monkeypatch.setattr(outputs, "metric_figures", lambda comparison: {})


def test_aggregates_match_the_runs_results(tmp_path, capsys):
    two_by_two(tmp_path / "runs")
    out = tmp_path / "out"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0

    rows = read_csv(out / "comparison.csv")
    assert [row["mixer"] for row in rows] == ["attention", "rnn"]  # best val/loss first
    for row in rows:
        results = [
            json.loads(p.read_text())
            for p in (tmp_path / "runs").glob("*/results.json")
            if json.loads(p.read_text())["mixer"] == row["mixer"]
        ]
        losses = [r["best"]["val/loss"] for r in results]
        assert int(row["n"]) == len(results) == 2
        assert float(row["val/loss_mean"]) == pytest.approx(statistics.mean(losses))
        assert float(row["val/loss_std"]) == pytest.approx(statistics.stdev(losses))
        assert float(row["tokens_per_s_mean"]) == pytest.approx(
            statistics.mean(r["tokens_per_s"] for r in results)
        )
        assert float(row["wall_s_mean"]) == pytest.approx(
            statistics.mean(r["wall_s"] for r in results)
        )
        assert float(row["params"]) == results[0]["params"]
        assert float(row["flops_per_token"]) == results[0]["flops_per_token"]
        assert sorted(row["seeds"].split(";")) == ["0", "1"]
        assert row["picked"] == "false"
    terminal = capsys.readouterr().out
    assert "attention" in terminal and "rnn" in terminal
    assert "failed and unfinished" not in terminal


@pytest.mark.parametrize("columns", [60, 80, 200])
def test_terminal_table_never_cuts_a_number(tmp_path, capsys, monkeypatch, columns):
    """A narrow terminal splits the costs into a second table instead of cutting cells short."""
    monkeypatch.setenv("COLUMNS", str(columns))
    root = tmp_path / "runs"
    for seed in (0, 1):
        write_run(
            root,
            f"l{seed}",
            mixer="linear_attention",
            seed=seed,
            loss=1.0 + seed / 8,
            params=123_456,
            tokens_per_s=20_680.0 + seed,
            wall_s=1234.0,
        )
    assert main([str(root), "--out", str(tmp_path / "out")]) == 0
    terminal = capsys.readouterr().out
    assert "\u2026" not in terminal  # rich's ellipsis
    for cell in ("linear_attention", "123k", "20,680", "1,234", "247k", "wall (s)"):
        assert cell in terminal, cell
    assert ("what each model costs" in terminal) == (columns < 200)
    widest = max(map(len, terminal.splitlines()))
    assert widest <= columns or columns == 60  # too narrow for either half: lines run over


def test_lr_grid_keeps_the_best_lr_per_group_and_says_so(tmp_path, capsys):
    root = tmp_path / "runs"
    for seed in (0, 1):
        write_run(root, f"a{seed}", mixer="attention", seed=seed, loss=1.0 + seed / 10)
        write_run(root, f"r1e-3_{seed}", mixer="rnn", seed=seed, lr=1e-3, loss=2.0, acc=0.9)
        write_run(
            root, f"r3e-3_{seed}", mixer="rnn", seed=seed, lr=3e-3, loss=1.5 + seed / 2, acc=0.6
        )
        # diverged (NaN); the smallest lr, so it comes first where a careless min() would keep it
        write_run(root, f"r1e-4_{seed}", mixer="rnn", seed=seed, lr=1e-4, loss=math.nan, acc=0.1)
    out = tmp_path / "out"
    assert main([str(root), "--out", str(out)]) == 0

    rows = {row["mixer"]: row for row in read_csv(out / "comparison.csv")}
    rnn = rows["rnn"]
    # 1.75 beats 2.0; the diverged (NaN) lr loses
    assert float(rnn["optim.lr_best"]) == pytest.approx(3e-3)
    assert rnn["picked"] == "true"
    assert float(rnn["val/loss_mean"]) == pytest.approx(1.75)
    assert int(rnn["n"]) == 2 and "r3e-3_0" in rnn["runs"] and "r1e-3_0" not in rnn["runs"]
    assert rows["attention"]["picked"] == "false"
    terminal = capsys.readouterr().out
    assert "picked optim.lr=0.003" in terminal
    assert "best of 3" in terminal
    markdown = (out / "comparison.md").read_text()
    assert "## Best grid point over optim.lr" in markdown and "picked optim.lr=0.003" in markdown
    assert "picked optim.lr=0.003" in (out / "report.html").read_text()

    # maximising accuracy picks another lr: 1e-3 has the best val/acc
    assert main([str(root), "--out", str(out), "--metric", "val/acc"]) == 0
    rnn = {row["mixer"]: row for row in read_csv(out / "comparison.csv")}["rnn"]
    assert float(rnn["optim.lr_best"]) == pytest.approx(1e-3)
    assert float(rnn["val/acc_mean"]) == pytest.approx(0.9)


def test_more_seeds_at_the_best_lr_do_not_hand_the_pick_to_a_one_seed_lr(tmp_path):
    # Zoology's protocol: the grid at seed 0, then seed 1 at seed 0's best lr only
    root = tmp_path / "runs"
    write_run(root, "lo_0", mixer="rnn", seed=0, lr=1e-3, loss=1.0, acc=0.8)
    write_run(root, "hi_0", mixer="rnn", seed=0, lr=3e-3, loss=1.0, acc=1.0)
    write_run(root, "hi_1", mixer="rnn", seed=1, lr=3e-3, loss=1.0, acc=0.5)  # mean 0.75 < 0.8
    out = tmp_path / "out"
    assert main([str(root), "--out", str(out), "--metric", "val/acc"]) == 0
    (row,) = read_csv(out / "comparison.csv")
    assert float(row["optim.lr_best"]) == pytest.approx(3e-3)  # ranked on seed 0, both lrs ran
    assert int(row["n"]) == 2 and float(row["val/acc_mean"]) == pytest.approx(0.75)


def test_lr_grid_is_shown_row_by_row_when_lr_is_a_grouping_key(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "a", mixer="rnn", seed=0, lr=1e-3, loss=2.0)
    write_run(root, "b", mixer="rnn", seed=0, lr=3e-3, loss=1.0)
    out = tmp_path / "out"
    assert main([str(root), "--out", str(out), "--by", "mixer,optim.lr"]) == 0
    rows = read_csv(out / "comparison.csv")
    assert [(row["optim.lr"], row["picked"]) for row in rows] == [
        ("0.003", "false"),
        ("0.001", "false"),
    ]


def test_failed_and_interrupted_runs_are_listed_apart(tmp_path, capsys):
    root = tmp_path / "runs"
    two_by_two(root)
    traceback = "Traceback (most recent call last):\n  File x\nRuntimeError: CUDA out of memory"
    write_run(root, "gm0", mixer="gmlp", seed=0, loss=0.1, status="failed", error=traceback)
    write_run(root, "r2", mixer="rnn", seed=2, loss=0.2, status="interrupted")
    out = tmp_path / "out"
    assert main([str(root), "--out", str(out)]) == 0

    rows = {row["mixer"]: row for row in read_csv(out / "comparison.csv")}
    assert set(rows) == {"attention", "rnn"}  # gmlp has no finished run
    assert rows["rnn"]["n"] == "2" and float(rows["rnn"]["val/loss_mean"]) == pytest.approx(2.25)
    terminal = capsys.readouterr().out
    assert "failed and unfinished runs" in terminal
    assert "RuntimeError: CUDA out of memory" in terminal and "interrupted" in terminal
    markdown = (out / "comparison.md").read_text()
    section = markdown.split("## Failed and unfinished runs")[1]
    assert "gm0" in section and "| failed |" in section and "RuntimeError: CUDA" in section
    assert "r2" in section and "| interrupted |" in section
    assert "File x" in (out / "report.html").read_text()  # the full traceback


def test_by_config_keys(tmp_path, capsys):
    root = tmp_path / "runs"
    for mixer in ("attention", "conv"):
        for d_model in (32, 64):
            for seed in (0, 1):
                loss = d_model / 100 + seed / 10 + (mixer == "conv")
                write_run(
                    root,
                    f"{mixer}{d_model}s{seed}",
                    mixer=mixer,
                    seed=seed,
                    d_model=d_model,
                    loss=loss,
                )
    out = tmp_path / "out"
    assert main([str(root), "--out", str(out), "--by", "mixer.name,model.d_model"]) == 0
    rows = read_csv(out / "comparison.csv")
    assert [(r["mixer.name"], r["model.d_model"], r["n"]) for r in rows] == [
        ("attention", "32", "2"),
        ("attention", "64", "2"),
        ("conv", "32", "2"),
        ("conv", "64", "2"),
    ]
    assert float(rows[1]["val/loss_mean"]) == pytest.approx(0.69)
    assert "warning" not in capsys.readouterr().out

    # grouping by mixer alone mixes two widths: the output says which key differs
    assert main([str(root), "--out", str(out)]) == 0
    terminal = capsys.readouterr().out
    assert "warning" in terminal and "model.d_model" in terminal


def test_no_results_names_the_paths_and_how_to_make_runs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    error = capsys.readouterr().err
    assert str(tmp_path / "empty") in error and "mixerlab train" in error
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "no such path" in capsys.readouterr().err


def test_unknown_or_seed_by_key_is_refused(tmp_path, capsys):
    two_by_two(tmp_path)
    assert main([str(tmp_path), "--by", "model.d_modl"]) == 2
    error = capsys.readouterr().err
    assert "model.d_modl" in error and "Did you mean model.d_model?" in error
    assert "optim.lr" in error and "tokens_per_s" not in error
    assert main([str(tmp_path), "--by", "mixer,seed"]) == 2
    assert "averaged over" in capsys.readouterr().err
    assert not (tmp_path / "comparison").exists()


def test_metric_missing_in_some_runs_names_them(tmp_path, capsys):
    two_by_two(tmp_path)
    results = tmp_path / "r1" / "results.json"
    data = json.loads(results.read_text())
    del data["best"]["val/acc"]
    results.write_text(json.dumps(data))
    assert main([str(tmp_path), "--metric", "val/acc"]) == 2
    error = capsys.readouterr().err
    named = error.split("Metrics")[0]
    assert str(tmp_path / "r1") in named and "1 of 4" in named and "a0" not in named


def test_only_failed_runs_is_an_error_that_still_lists_them(tmp_path, capsys):
    write_run(tmp_path, "x", mixer="rnn", seed=0, loss=1, status="failed", error="ValueError: boom")
    assert main([str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "ValueError: boom" in captured.out and "none of the 1 runs finished" in captured.err


def test_the_selection_direction_comes_from_the_metric_name_or_mode(tmp_path, capsys):
    root = tmp_path / "runs"
    write_run(root, "a", mixer="attention", seed=0, loss=1.0, acc=0.2)
    write_run(root, "r", mixer="rnn", seed=0, loss=2.0, acc=0.7)
    for path in root.glob("*/results.json"):  # a metric whose name says neither min nor max
        data = json.loads(path.read_text())
        data["best"]["val/score"] = data["best"]["val/acc@seq_len=256,kv=16"] = data["best"][
            "val/acc"
        ]
        path.write_text(json.dumps(data))
    out = tmp_path / "out"
    assert main([str(root), "--metric", "val/score", "--out", str(out)]) == 2
    assert "val/score should be minimised or maximised: pass --mode" in capsys.readouterr().err
    assert not out.exists()
    assert main([str(root), "--metric", "val/score", "--mode", "max", "--out", str(out)]) == 0
    assert [row["mixer"] for row in read_csv(out / "comparison.csv")] == ["rnn", "attention"]
    assert "higher is better" in capsys.readouterr().out

    runs = load_runs([root])
    assert build_comparison(runs, ["mixer"], "val/loss", None).mode == "min"
    per_set = build_comparison(runs, ["mixer"], "val/acc@seq_len=256,kv=16", None)
    assert per_set.mode == "max"  # the validation set's name after @ does not count


def test_the_comparison_cannot_be_changed_once_built(tmp_path):
    two_by_two(tmp_path)
    comparison = build_comparison(load_runs([tmp_path]), ["mixer"], "val/loss", None)
    group = comparison.groups[0]
    with pytest.raises(FrozenInstanceError):
        comparison.warnings = ("added later",)
    with pytest.raises(FrozenInstanceError):
        group.metric.mean = 0.0
    with pytest.raises(TypeError):
        comparison.groups[0] = group
    with pytest.raises(TypeError):
        comparison.curves["val/loss"]["attention"] = comparison.curves["val/loss"]["rnn"]
    with pytest.raises(TypeError):
        group.chance["val/acc"] = None
    with pytest.raises(TypeError):
        group.grid[(0.1,)] = group.metric
    with pytest.raises(TypeError):
        comparison.marks[group.label] = comparison.mark(group)
    with pytest.raises(FrozenInstanceError):
        comparison.mark(group).rank = 1
    with pytest.raises(AttributeError):
        comparison.warnings.append("added later")
    with pytest.raises(FrozenInstanceError):
        comparison.scope.differing = ()


def test_a_run_is_dated_by_its_record_before_its_file(tmp_path):
    """A fresh clone of a committed study gives every file the clone's day: the record's own
    ``updated_at`` dates the run; the file's day only where a record has none."""
    write_run(tmp_path, "a0", mixer="attention", seed=0, loss=1.0)
    write_run(tmp_path, "a1", mixer="attention", seed=1, loss=1.1)
    record = tmp_path / "a0" / "results.json"
    record.write_text(
        json.dumps({**json.loads(record.read_text()), "updated_at": "2026-03-01T23:59:00+00:00"})
    )
    stamp = datetime.fromisoformat("2026-03-09T12:00").timestamp()
    for run in ("a0", "a1"):
        os.utime(tmp_path / run / "results.json", (stamp, stamp))
    out = tmp_path / "out"
    assert main([str(tmp_path), "--by", "mixer", "--metric", "val/acc", "--out", str(out)]) == 0
    assert "- runs written: 2026-03-01 to 2026-03-09\n" in (out / "comparison.md").read_text()


def test_the_report_header_says_what_was_compared(tmp_path, capsys):
    write_run(tmp_path, "a0", mixer="attention", seed=0, loss=1.0, d_model=64)
    write_run(tmp_path, "a1", mixer="attention", seed=1, loss=1.1, d_model=64)
    write_run(tmp_path, "r0", mixer="rnn", seed=0, loss=2.0, d_model=128)
    for run, day in {"a0": "2026-03-01", "a1": "2026-03-02", "r0": "2026-03-04"}.items():
        stamp = datetime.fromisoformat(f"{day}T12:00").timestamp()
        os.utime(tmp_path / run / "results.json", (stamp, stamp))
    out = tmp_path / "out"
    assert main([str(tmp_path), "--by", "mixer", "--metric", "val/acc", "--out", str(out)]) == 0
    expected = [
        "experiment (config name): zoology",
        "task: mqar",
        "budget (trainer.max_steps): 30",
        "runs written: 2026-03-01 to 2026-03-04",
        "--by mixer --metric val/acc --mode max",
        "config keys that differ between groups: model.d_model",  # mixer.* is what --by names
    ]
    markdown, report = ((out / name).read_text() for name in ("comparison.md", "report.html"))
    for line in expected:
        assert f"- {line}\n" in markdown and f"<li>{html.escape(line)}</li>" in report, line
    title = "experiment zoology · task mqar · 30 steps · 2026-03-01 to 2026-03-04"
    assert title in capsys.readouterr().out

    write_run(tmp_path / "more", "r1", mixer="rnn", seed=1, loss=2.1, d_model=128)
    write_run(tmp_path / "more", "r1_lr", mixer="rnn", seed=1, loss=9.0, d_model=128, lr=0.1)
    for path, differing in ((tmp_path, ("model.d_model",)), (tmp_path / "more", ())):
        comparison = build_comparison(load_runs([path]), ["mixer"], "val/loss", None)
        assert comparison.scope.differing == differing  # not the lr left out; one group: none


@pytest.mark.slow  # a fresh interpreter
def test_compare_imports_neither_torch_nor_lightning(tmp_path):
    """``mixerlab compare`` starts fast: the whole command runs without torch or Lightning."""
    two_by_two(tmp_path / "runs")
    script = (
        "import sys; from mixerlab.experiments.cli import main; "
        f"code = main(['compare', {str(tmp_path / 'runs')!r}]); "
        "heavy = [m for m in ('torch', 'pytorch_lightning', 'lightning') if m in sys.modules]; "
        "print(code, heavy)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.splitlines()[-1] == "0 []", done.stderr[-2000:]


def test_also_tabulates_final_metrics_of_the_kept_runs(tmp_path, capsys):
    root = tmp_path / "runs"
    for seed in (0, 1):
        for lr, acc in ((1e-3, 0.9), (1e-2, 0.4)):  # lr 1e-3 is kept; 1e-2 runs must not count
            per_set = {"val/acc@len=64": acc + seed / 100, "val/acc@len=128": acc / 2 + seed / 10}
            write_run(root, f"r{lr}_{seed}", mixer="rnn", seed=seed, lr=lr, loss=1.0, acc=acc,
                      final=per_set)  # fmt: skip
    out = tmp_path / "out"
    assert main([str(root), "--metric", "val/acc", "--also", "val/acc@*", "--out", str(out)]) == 0

    (row,) = read_csv(out / "comparison.csv")
    assert row["optim.lr_best"] == "0.001"
    assert float(row["val/acc@len=64_final_mean"]) == pytest.approx(0.905)
    assert float(row["val/acc@len=128_final_mean"]) == pytest.approx(0.5)
    assert float(row["val/acc@len=128_final_std"]) == pytest.approx(statistics.stdev([0.45, 0.55]))
    markdown = (out / "comparison.md").read_text().splitlines()
    header = next(line for line in markdown if line.startswith("| mixer |"))
    assert header.index("val/acc@len=64") < header.index("val/acc@len=128")  # logging order
    assert "at the end of training" in (out / "comparison.md").read_text()

    # the selection metric itself, at its final value: its own columns, not a clash
    assert main([str(root), "--metric", "val/acc", "--also", "val/acc", "--out", str(out)]) == 0
    (row,) = read_csv(out / "comparison.csv")
    assert float(row["val/acc_mean"]) == float(row["val/acc_final_mean"]) == pytest.approx(0.9)
    assert (
        "| val/acc | 95% interval | vs best | rank | val/acc (final) |"
        in (out / "comparison.md").read_text()
    )

    assert main([str(root), "--also", "val/bpb", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "--also val/bpb" in error and "val/acc@len=128" in error
