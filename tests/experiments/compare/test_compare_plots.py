"""mixerlab compare's curves and plots: seed bands from metrics.csv, the plot registry, a new plot
as one new file in ``experiments/compare/plots/``, and a real sweep compared end to end."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from run_folders import STEPS, read_csv, two_by_two, write_run

from mixerlab.experiments.cli.compare import main
from mixerlab.experiments.compare import outputs
from mixerlab.experiments.compare.aggregate import build_comparison
from mixerlab.experiments.compare.history import Curve, read_history, seed_band
from mixerlab.experiments.compare.plots import _draw_curves, base, register_plot, registered_plots
from mixerlab.experiments.compare.runs import Run, load_runs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUITE_PLOTS = {"suite_score.png"}  # drawn for a suite's runs only (test_mad_score.py)


def general_plots() -> list[base.Plot]:
    """Every registered plot that any comparison draws: all but the suite's."""
    return [plot for plot in registered_plots() if plot.file not in SUITE_PLOTS]


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    """rich wraps to 80 columns when not on a terminal; the checks read whole cells."""
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture
def no_drawing(monkeypatch):
    """For the tests that read what compare says about curves, not the pictures."""
    monkeypatch.setattr(base, "_REGISTRY", {})
    monkeypatch.setattr(outputs, "metric_figures", lambda comparison: {})


def test_every_registered_plot_and_file_is_written(tmp_path):
    root = tmp_path / "runs"
    two_by_two(root)
    assert main([str(root)]) == 0  # default out: the first path's comparison/
    out = root / "comparison"
    plots = general_plots()
    assert {"curve_step.png", "throughput.png"} <= {plot.file for plot in plots}
    for name in ["comparison.csv", "comparison.md", "report.html", *(p.file for p in plots)]:
        assert (out / name).stat().st_size > 0, name
    markdown = (out / "comparison.md").read_text()
    report = (out / "report.html").read_text()
    for plot in plots:
        assert (out / plot.file).read_bytes()[:8] == PNG_MAGIC
        assert f"![{plot.description}]({plot.file})" in markdown
        assert f"<figcaption>{plot.description}</figcaption>" in report
    assert report.count("<figcaption>") == len(plots)
    metrics = ("train/loss", "val/acc", "val/loss")  # every logged metric, in the menu
    assert report.count("data:image/png;base64,") == len(plots) + len(metrics)
    for metric in metrics:
        assert (
            f"<option value='{metric}'" in report and f"<figure data-metric='{metric}'>" in report
        )
    assert "<td>attention</td>" in report
    # every run behind the table, its folder linked from the report
    kept = [run for run in (root).iterdir() if (run / "results.json").exists()]
    assert "## Runs in the table" in markdown
    for run in kept:
        assert f"<a href='{run.resolve().as_uri()}'>{run.resolve()}</a>" in report
    assert not list(out.glob(".*tmp"))
    # compare again over the same folder: the outputs are not taken for runs
    assert main([str(root)]) == 0
    assert (out / "comparison.csv").read_text().count("\n") == 3  # header and two groups


def test_a_plot_with_nothing_to_draw_is_left_out(tmp_path, monkeypatch):
    def nothing(comparison):
        return None

    monkeypatch.setattr(outputs, "metric_figures", lambda comparison: {})
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    register_plot("nothing.png", "a plot without data")(nothing)
    two_by_two(tmp_path / "runs")
    out = tmp_path / "out"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert not (out / "nothing.png").exists()
    assert "a plot without data" not in (out / "comparison.md").read_text()
    report = (out / "report.html").read_text()
    assert report.count("<figcaption>") == len(general_plots()) - 1


def test_plot_file_names_are_checked(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    with pytest.raises(ValueError, match=r"registered twice.*curve_step"):
        register_plot("curve_step.png", "another step plot")(lambda comparison: None)
    with pytest.raises(ValueError, match="name a PNG"):
        register_plot("curve.svg", "not a PNG")


@pytest.mark.slow  # a fresh interpreter on a copy of the tree
def test_a_new_plot_is_one_new_file(project_copy, tmp_path):
    """The extension point: one file in plots/ and its PNG is written, linked and embedded."""
    project_copy.write(
        "experiments/compare/plots/seed_count.py",
        '''"""How many seeds each group averages."""

from mixerlab.experiments.compare.comparison import Comparison
from mixerlab.experiments.compare.plots.base import new_figure, register_plot, to_png


@register_plot("seed_count.png", "seeds per group")
def seed_count(comparison: Comparison) -> bytes:
    ax = new_figure().subplots()
    ax.bar([comparison.group_name(g) for g in comparison.groups],
           [g.metric.n for g in comparison.groups])
    return to_png(ax.figure)
''',
    )
    two_by_two(tmp_path / "runs")
    out = tmp_path / "out"
    done = project_copy.run(
        "-m", "mixerlab.experiments.cli", "compare", str(tmp_path / "runs"), "--out", str(out)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "seed_count.png").read_bytes()[:8] == PNG_MAGIC
    assert "![seeds per group](seed_count.png)" in (out / "comparison.md").read_text()
    report = (out / "report.html").read_text()
    assert "<figcaption>seeds per group</figcaption>" in report
    assert report.count("<figcaption>") == len(general_plots()) + 1
    assert not (Path(base.__file__).parent / "seed_count.py").exists()  # the real tree is untouched


def test_curves_come_from_the_runs_metrics_csv(tmp_path, capsys, no_drawing):
    run = write_run(tmp_path, "a0", mixer="attention", seed=3, loss=1.0)
    history = read_history(Run(run, json.loads((run / "results.json").read_text())))
    curve = history["val/loss"]
    assert curve.step.tolist() == list(STEPS)  # train-only rows skipped
    assert curve.value.tolist() == pytest.approx([1.2, 1.1, 1.0])
    first_train_log = (STEPS[0] - 5) * 0.5  # the clock starts at the first training step
    assert curve.wall_s.tolist() == [s * 0.5 + 3 - first_train_log for s in STEPS]

    write_run(tmp_path, "a1", mixer="attention", seed=1, loss=1.0)
    (tmp_path / "a1" / "metrics.csv").unlink()
    assert main([str(tmp_path)]) == 0
    terminal = capsys.readouterr().out
    assert (
        "no val/loss curve for 1 run(s)" in terminal and "history metrics.csv not found" in terminal
    )


def test_wall_clock_starts_at_the_first_training_step_not_at_process_start(tmp_path):
    """A sweep's first job pays the imports and data build before its first step."""
    history = "step,wall_s,train/loss,val/loss\n{}\n"
    rows = {
        "first_job": ["1,95.0,3.0,", "2,96.0,2.9,", "2,96.5,,2.5", "4,99.0,,2.0"],
        "later_job": ["1,5.0,3.0,", "2,6.0,2.9,", "2,6.5,,2.5", "4,9.0,,2.0"],
        "no_train_log": ["2,6.5,,2.5"],
    }
    curves = {}
    for name, lines in rows.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.csv").write_text(history.format("\n".join(lines)))
        run = Run(tmp_path / name, {"history": "metrics.csv"})
        curves[name] = read_history(run)["val/loss"].wall_s.tolist()
    assert curves["first_job"] == curves["later_job"] == [1.5, 4.0]
    assert curves["no_train_log"] == [6.5]  # nothing to start from: the times as logged


def drawn_curve_axes(comparison, monkeypatch, x: str):
    """The axes draw_curves makes, caught before they become PNG bytes."""
    figures = []
    monkeypatch.setattr(_draw_curves, "to_png", lambda fig: figures.append(fig) or b"")
    _draw_curves.draw_curves(comparison, x)
    return figures[0].axes[0]


def test_one_seed_groups_say_1_seed_and_show_no_band_or_std(tmp_path, monkeypatch):
    write_run(tmp_path, "a0", mixer="attention", seed=0, loss=1.0)
    write_run(tmp_path, "r0", mixer="rnn", seed=0, loss=2.0)
    single = build_comparison(load_runs([tmp_path]), ["mixer"], "val/loss", None)
    ax = drawn_curve_axes(single, monkeypatch, "step")
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["attention (1 seed)", "rnn (1 seed)"]
    assert "band" not in ax.get_title() and "1 seed" in ax.get_title()
    assert not ax.collections  # no band drawn
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    for report in ("comparison.md", "report.html"):
        text = (tmp_path / "out" / report).read_text()
        assert "±" not in text and "1 seed per group" in text, report

    write_run(tmp_path, "a1", mixer="attention", seed=1, loss=1.2)
    mixed = build_comparison(load_runs([tmp_path]), ["mixer"], "val/loss", None)
    ax = drawn_curve_axes(mixed, monkeypatch, "step")
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["attention (n=2)", "rnn (1 seed)"]
    assert "band min-max" in ax.get_title() and len(ax.collections) == 1


def test_the_step_axis_has_integer_ticks(tmp_path, monkeypatch):
    for seed in (0, 1):  # three steps, so matplotlib would tick at 10, 12.5, 15, ...
        write_run(tmp_path, f"a{seed}", mixer="attention", seed=seed, loss=1.0)
    comparison = build_comparison(load_runs([tmp_path]), ["mixer"], "val/loss", None)
    ax = drawn_curve_axes(comparison, monkeypatch, "step")
    ticks = ax.get_xticks()
    assert len(ticks) > 1 and all(float(tick).is_integer() for tick in ticks)


def test_seed_band_interpolates_onto_the_shared_steps():
    a = Curve(np.array([0.0, 10.0, 20.0]), np.array([0.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0]))
    b = Curve(np.array([5.0, 15.0, 25.0]), np.array([5.0, 7.0, 9.0]), np.array([3.0, 3.0, 3.0]))
    band = seed_band([a, b], "minmax")
    assert band.step.tolist() == [5.0, 10.0, 15.0, 20.0]  # only where both seeds have data
    assert band.wall_s.tolist() == pytest.approx([2.75, 3.5, 4.25, 5.0])  # mean time to the step
    assert band.center.tolist() == pytest.approx([2.25, 2.5, 2.75, 3.0])
    assert band.low.tolist() == pytest.approx([1.5, 2.0, 2.5, 3.0])
    assert band.high.tolist() == pytest.approx([3.0] * 4)
    assert band.n == 2
    band = seed_band([a, b], "std")
    spread = np.std([[1.5, 2, 2.5, 3], [3] * 4], axis=0, ddof=1)
    assert (band.high - band.center).tolist() == pytest.approx(spread.tolist())
    late = Curve(a.step + 100, a.wall_s, a.value)
    assert seed_band([a, late], "minmax") is None


def test_groups_without_shared_steps_are_named_and_left_off_the_curves(
    tmp_path, capsys, no_drawing
):
    two_by_two(tmp_path / "runs")
    (tmp_path / "runs" / "r1" / "metrics.csv").write_text("step,wall_s,val/loss\n100,1,2\n")
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    assert "no curve drawn for: rnn" in capsys.readouterr().out
    assert "no curve drawn for: rnn" in (tmp_path / "out" / "comparison.md").read_text()


@pytest.mark.slow
def test_real_sweep_then_compare(tmp_path, capsys):
    """Two mixers x two seeds through `mixerlab train -m` (tiny, CPU), then compare the sweep."""
    sweep = tmp_path / "sweep"
    env = {
        **os.environ,
        "MIXERLAB_CACHE": str(tmp_path / "cache"),
        "WANDB_MODE": "disabled",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    overrides = ["debug=default", "logger=none", "model.d_model=16", "model.n_layers=1"]
    command = [sys.executable, "-m", "mixerlab.experiments.cli", "train", "-m", *overrides]
    command += ["mixer=attention,conv", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "out"
    assert main([str(sweep), "--out", str(out)]) == 0
    assert "warning" not in capsys.readouterr().out  # every run has its curve
    results = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert len(results) == 4 and {r["status"] for r in results} == {"finished"}
    assert {r["chance"]["val/bpb"]["label"] for r in results} == {"unigram"}  # the text task's
    rows = {row["mixer"]: row for row in read_csv(out / "comparison.csv")}
    assert set(rows) == {"attention", "conv"}
    for mixer, row in rows.items():
        runs = [r for r in results if r["mixer"] == mixer]
        assert row["n"] == "2" and sorted(row["seeds"].split(";")) == ["0", "1"]
        losses = [r["best"]["val/loss"] for r in runs]
        assert float(row["val/loss_mean"]) == pytest.approx(statistics.mean(losses))
        assert float(row["params"]) == runs[0]["params"]
    report = (out / "report.html").read_text()
    assert report.count("<figcaption>") == len(general_plots())
    assert "val/loss: unigram" in report  # the chance level, named
