"""Chance levels in ``mixerlab compare``: read from results.json, named in the table headers and
notes, groups that do not beat them flagged "at chance", dashed lines on the curve plots, and
older runs without them compared as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from run_folders import read_csv, write_run

from mixerlab.experiments.cli.compare import main
from mixerlab.experiments.compare import outputs
from mixerlab.experiments.compare.aggregate import build_comparison
from mixerlab.experiments.compare.chance import at_chance
from mixerlab.experiments.compare.comparison import Chance, Stats
from mixerlab.experiments.compare.plots import _draw_curves, base
from mixerlab.experiments.compare.runs import load_runs

HOW = "uniform guess over the 60 values"


@pytest.fixture(autouse=True)
def tables_only(monkeypatch):
    """Wide terminal, no PNGs: the tests that draw catch the figure before it is encoded."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(base, "_REGISTRY", {})
    monkeypatch.setattr(outputs, "metric_figures", lambda comparison: {})


def with_chance(run: Path, levels: dict[str, float], label: str = "chance") -> Path:
    """Record chance levels in a run's results.json, as the train app does."""
    path = run / "results.json"
    data = json.loads(path.read_text())
    data["chance"] = {m: {"value": v, "label": label, "how": HOW} for m, v in levels.items()}
    path.write_text(json.dumps(data))
    return run


def selective_copy_like(root: Path) -> None:
    """attention learned the task (two seeds); conv stayed at chance (1/60)."""
    for seed in (0, 1):
        for mixer, acc in (("attention", 0.9 + seed / 100), ("conv", 1 / 60 + seed / 200)):
            run = write_run(root, f"{mixer}{seed}", mixer=mixer, seed=seed, loss=1.0, acc=acc)
            with_chance(run, {"val/acc": 1 / 60, "val/loss": 4.094})


def test_chance_is_named_in_the_table_and_flagged_where_a_group_does_not_beat_it(tmp_path, capsys):
    selective_copy_like(tmp_path / "runs")
    out = tmp_path / "out"
    assert main([str(tmp_path / "runs"), "--metric", "val/acc", "--out", str(out)]) == 0
    terminal = capsys.readouterr().out
    assert "val/acc (chance 0.01667)" in terminal  # the header, once for all groups
    conv = next(line for line in terminal.splitlines() if "│ conv" in line)
    attention = next(line for line in terminal.splitlines() if "│ attention" in line)
    assert "(at chance)" in conv and "at chance" not in attention
    assert f"chance levels\n  val/acc: chance 0.01667 ({HOW})" in terminal
    markdown, report = ((out / name).read_text() for name in ("comparison.md", "report.html"))
    assert "## Chance levels" in markdown and "| val/acc (chance 0.01667) |" in markdown
    assert "0.01917 ± 0.0035 (at chance) |" in markdown
    assert "<h2>Chance levels</h2>" in report and "(at chance)</td>" in report
    rows = {row["mixer"]: row for row in read_csv(out / "comparison.csv")}
    assert float(rows["conv"]["val/acc_chance"]) == pytest.approx(1 / 60)
    assert rows["conv"]["val/acc_at_chance"] == "true"
    assert rows["attention"]["val/acc_at_chance"] == "false"


def test_runs_made_before_chance_levels_compare_as_before(tmp_path, capsys):
    write_run(tmp_path, "old", mixer="rnn", seed=0, loss=1.0)
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    assert "chance" not in capsys.readouterr().out.split("written to")[0]
    assert "## Chance levels" not in (tmp_path / "out" / "comparison.md").read_text()
    (row,) = read_csv(tmp_path / "out" / "comparison.csv")
    assert row["val/loss_chance"] == row["val/loss_at_chance"] == ""

    # a newer run beside it: no level common to every group, so it is named in its own cell
    with_chance(write_run(tmp_path, "new", mixer="gmlp", seed=0, loss=2.0), {"val/loss": 4.094})
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "(chance 4.094)" in next(line for line in lines if "│ gmlp" in line)
    assert "chance" not in next(line for line in lines if "│ rnn" in line)


def test_groups_of_different_tasks_show_each_level_in_its_cell(tmp_path, capsys):
    for task, chance in (("mqar", 1 / 60), ("induction_heads", 1 / 14)):
        run = write_run(tmp_path, task, mixer="rnn", seed=0, loss=1.0, acc=chance + 0.001)
        data = json.loads((run / "results.json").read_text())
        data["task"] = data["config"]["task"]["name"] = task
        (run / "results.json").write_text(json.dumps(data))
        with_chance(run, {"val/acc": chance})
    out = str(tmp_path / "out")
    assert main([str(tmp_path), "--by", "task", "--metric", "val/acc", "--out", out]) == 0
    terminal = capsys.readouterr().out
    assert "(chance 0.01667, at chance)" in terminal and "(chance 0.07143, at chance)" in terminal
    assert "no chance level shared by every group" in terminal


def test_a_group_is_at_chance_within_its_seed_spread_or_one_point():
    chance = Chance(0.1, "chance", HOW)

    def stats(mean: float, std: float | None) -> Stats:
        return Stats(mean, std, 1 if std is None else 3, mean, mean)

    assert at_chance(stats(0.105, None), chance, "max")  # one seed: within one point
    assert not at_chance(stats(0.12, None), chance, "max")
    assert at_chance(stats(0.15, 0.06), chance, "max")  # seeds spread wider than the gain
    assert not at_chance(stats(0.15, 0.02), chance, "max")
    assert at_chance(stats(0.05, 0.001), chance, "max")  # below chance is at chance too
    loss = Chance(4.0, "chance", HOW)  # beyond 1, a point is 1% of the level
    assert at_chance(stats(3.97, None), loss, "min") and not at_chance(
        stats(3.9, None), loss, "min"
    )
    assert at_chance(stats(float("nan"), None), loss, "min")  # diverged


def test_a_group_whose_runs_disagree_on_chance_has_none(tmp_path):
    with_chance(write_run(tmp_path, "a", mixer="rnn", seed=0, loss=1.0), {"val/loss": 4.0})
    with_chance(write_run(tmp_path, "b", mixer="rnn", seed=1, loss=1.0), {"val/loss": 3.0})
    comparison = build_comparison(load_runs([tmp_path]), ["mixer"], "val/loss", None)
    assert dict(comparison.groups[0].chance) == {} and comparison.chance("val/loss") is None


def drawn_axes(comparison, monkeypatch, draw):
    figures = []
    monkeypatch.setattr(_draw_curves, "to_png", lambda fig: figures.append(fig) or b"")
    draw(comparison)
    return figures[0].axes


def test_curve_plots_draw_chance_as_a_dashed_labelled_line(tmp_path, monkeypatch):
    selective_copy_like(tmp_path)
    comparison = build_comparison(load_runs([tmp_path]), ["mixer"], "val/acc", None)
    (ax,) = drawn_axes(comparison, monkeypatch, lambda c: _draw_curves.draw_curves(c, "step"))
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == [1 / 60] * 2
    assert [t.get_text() for t in ax.texts] == ["chance 0.01667"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["attention (n=2)", "conv (n=2)"]
    low, high = ax.get_ylim()
    assert low < 1 / 60 < high
    (ax,) = drawn_axes(
        comparison, monkeypatch, lambda c: _draw_curves.draw_curves(c, "step", "train/loss")
    )
    assert not ax.texts  # no level for the training loss: no line


def test_the_panels_are_train_loss_then_one_per_validation_set(tmp_path, monkeypatch):
    for seed in (0, 1):
        final = {"val/acc@kv=4": 0.9, "val/acc@kv=8": 0.5}
        run = write_run(tmp_path, f"r{seed}", mixer="rnn", seed=seed, loss=1.0, final=final)
        history = (run / "metrics.csv").read_text().splitlines()
        rows = [history[0] + ",val/acc@kv=4,val/acc@kv=8"]
        rows += [line + (",0.9,0.5" if line.split(",")[3] else ",,") for line in history[1:]]
        (run / "metrics.csv").write_text("\n".join(rows) + "\n")
        with_chance(run, {"val/acc@kv=4": 1 / 60, "val/acc@kv=8": 1 / 60})
    comparison = build_comparison(load_runs([tmp_path]), ["mixer"], "val/acc", None)
    assert _draw_curves.panel_metrics(comparison) == ["train/loss", "val/acc@kv=4", "val/acc@kv=8"]
    axes = drawn_axes(comparison, monkeypatch, _draw_curves.draw_panels)
    titles = [ax.get_title() for ax in axes if ax.get_visible()]
    assert [t.split(":")[0] for t in titles] == ["train/loss", "val/acc@kv=4", "val/acc@kv=8"]
    assert [len(ax.texts) for ax in axes if ax.get_visible()] == [0, 1, 1]  # chance per val set
    assert not axes[3].get_visible()  # the grid's spare cell
