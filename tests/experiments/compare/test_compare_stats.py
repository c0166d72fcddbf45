"""The statistics of every comparison, on synthetic run folders: each group's 95% t-interval,
its mark against the best group (separated or within noise, by Welch's t-test), ranks that ties
share, no interval for fewer than 3 seeds, and the best grid point over several swept keys."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
from run_folders import read_csv, write_run

from mixerlab.experiments.cli.compare import main
from mixerlab.experiments.compare import outputs
from mixerlab.experiments.compare.aggregate import build_comparison
from mixerlab.experiments.compare.comparison import Stats
from mixerlab.experiments.compare.plots import base
from mixerlab.experiments.compare.runs import load_runs
from mixerlab.experiments.compare.significance import t_critical, t_p_value, welch_p

T_975 = {1: 12.706204736174707, 2: 4.302652729749464, 4: 2.7764451051977934}  # t tables


@pytest.fixture(autouse=True)
def tables_only(monkeypatch):
    """These tests read tables, never PNGs: seconds saved."""
    monkeypatch.setattr(base, "_REGISTRY", {})
    monkeypatch.setattr(outputs, "metric_figures", lambda comparison: {})
    monkeypatch.setenv("COLUMNS", "250")


def seeds(root: Path, mixer: str, losses: list[float], **fields) -> None:
    for seed, loss in enumerate(losses):
        write_run(root, f"{mixer}{seed}", mixer=mixer, seed=seed, loss=loss, **fields)


LOSSES = {
    "attention": [1.00, 1.02, 0.98],  # the best mean
    "gmlp": [1.01, 1.20, 0.85],  # close to it and spread wide: within noise
    "conv": [2.00, 2.10, 1.90],  # far from both: separated
    "rnn": [0.50, 0.60],  # the best mean of all, but 2 seeds: no interval, no mark
}


def compared(tmp_path: Path, losses: dict[str, list[float]] = LOSSES) -> Path:
    for mixer, values in losses.items():
        seeds(tmp_path / "runs", mixer, values)
    out = tmp_path / "out"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    return out


def cells(table: str, mixer: str) -> list[str]:
    """The cells of ``mixer``'s row of a markdown table."""
    row = next(line for line in table.splitlines() if line.startswith(f"| {mixer} |"))
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_t_distribution_matches_the_tables() -> None:
    for df, t in T_975.items():
        assert t_critical(df) == pytest.approx(t, rel=1e-12)
        assert t_p_value(t, df) == pytest.approx(0.05, rel=1e-12)
    assert t_p_value(0.0, 3) == 1.0 and t_p_value(math.inf, 3) == 0.0


def test_t_distribution_and_welch_match_scipy() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3.7, 9, 250):
        assert t_critical(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=1e-10)
        for t in (0.3, 2.0, 7.5):
            assert t_p_value(t, df) == pytest.approx(2 * scipy_stats.t.sf(t, df), rel=1e-9)
    a, b = [1.0, 1.2, 0.9], [1.5, 2.5, 1.7, 1.9]
    expected = scipy_stats.ttest_ind(a, b, equal_var=False).pvalue
    assert welch_p(*map(as_stats, (a, b))) == pytest.approx(expected, rel=1e-10)


def as_stats(values: list[float]) -> Stats:
    return Stats(statistics.mean(values), statistics.stdev(values), len(values), 0.0, 0.0)


def test_welch_without_spread_separates_any_difference() -> None:
    flat = Stats(1.0, 0.0, 3, 1.0, 1.0)
    assert welch_p(flat, flat) == 1.0
    assert welch_p(flat, Stats(0.99, 0.0, 3, 0.99, 0.99)) == 0.0


def test_a_separated_group_and_one_within_noise_are_marked_in_every_output(tmp_path, capsys):
    out = compared(tmp_path)
    rows = {row["mixer"]: row for row in read_csv(out / "comparison.csv")}
    assert [row["mixer"] for row in read_csv(out / "comparison.csv")] == [
        "rnn", "attention", "gmlp", "conv",
    ]  # fmt: skip
    verdicts = {mixer: row["val/loss_vs_best"] for mixer, row in rows.items()}
    assert verdicts == {
        "rnn": "untested", "attention": "best", "gmlp": "within noise", "conv": "separated",
    }  # fmt: skip
    # the best of the groups of 3 seeds is attention: mean 1, std 0.02, t(0.975, 2) = 4.3027;
    # Welch's p-values as scipy.stats.ttest_ind(equal_var=False) gives them: 0.862, 0.00244
    half = T_975[2] * 0.02 / math.sqrt(3)
    assert float(rows["attention"]["val/loss_ci95_low"]) == pytest.approx(1 - half)
    assert float(rows["attention"]["val/loss_ci95_high"]) == pytest.approx(1 + half)
    assert float(rows["gmlp"]["val/loss_p_vs_best"]) > 0.05
    assert float(rows["conv"]["val/loss_p_vs_best"]) < 0.05
    # attention and gmlp share rank 1; both beat conv, which ranks 3
    assert {m: row["val/loss_rank"] for m, row in rows.items()} == {
        "rnn": "", "attention": "1", "gmlp": "1", "conv": "3",
    }  # fmt: skip

    markdown = (out / "comparison.md").read_text()
    header = cells(markdown.split("\n\n")[2], "mixer")
    assert header[3:7] == ["val/loss", "95% interval", "vs best", "rank"]
    assert cells(markdown, "attention")[4:7] == ["[0.9503, 1.05]", "best", "1 (tied)"]
    assert cells(markdown, "gmlp")[5:7] == ["within noise (p=0.862)", "1 (tied)"]
    assert cells(markdown, "conv")[5:7] == ["separated (p=0.00244)", "3"]
    assert cells(markdown, "rnn")[4:7] == ["none (2 seeds, needs 3)", "untested", "-"]
    terminal = capsys.readouterr().out
    report = (out / "report.html").read_text()
    for text in (markdown, terminal, report):
        for mark in ("within noise (p=0.862)", "separated (p=0.00244)", "1 (tied)", "untested"):
            assert mark in text, mark
        assert "none (2 seeds, needs 3)" in text
        assert "Welch's t-test" in text.replace("&#x27;", "'")
        assert "9 standard deviations either side" in text


def test_the_marks_follow_the_metric_direction(tmp_path):
    """Maximising: the highest accuracy is the best, the far lower one is separated."""
    root = tmp_path / "runs"
    for mixer, accs in {"attention": [0.9, 0.92, 0.91], "conv": [0.5, 0.52, 0.49]}.items():
        for seed, acc in enumerate(accs):
            write_run(root, f"{mixer}{seed}", mixer=mixer, seed=seed, loss=1.0, acc=acc)
    comparison = build_comparison(load_runs([root]), ["mixer"], "val/acc", None)
    marks = [comparison.mark(group) for group in comparison.groups]
    assert [(m.verdict, m.rank, m.tied) for m in marks] == [
        ("best", 1, False),
        ("separated", 2, False),
    ]


def test_groups_of_fewer_than_3_seeds_get_no_interval_and_say_why(tmp_path, capsys):
    out = compared(tmp_path, {"attention": [1.0, 1.1], "rnn": [2.0]})
    for row in read_csv(out / "comparison.csv"):
        assert row["val/loss_ci95_low"] == row["val/loss_ci95_high"] == row["val/loss_rank"] == ""
        assert row["val/loss_vs_best"] == "untested" and row["val/loss_p_vs_best"] == ""
    markdown = (out / "comparison.md").read_text()
    assert cells(markdown, "attention")[4:7] == ["none (2 seeds, needs 3)", "untested", "-"]
    assert cells(markdown, "rnn")[4:7] == ["none (1 seed, needs 3)", "untested", "-"]
    caption = next(line for line in markdown.splitlines() if line.startswith("mean ±"))
    assert "Fewer than 3 seeds: no interval, mark or rank" in caption
    assert "Welch" not in caption  # no group is tested: no word on the test
    assert "none (2 seeds, needs 3)" in capsys.readouterr().out


def test_a_diverged_seed_leaves_its_group_untested(tmp_path):
    comparison_dir = compared(tmp_path, {"attention": [1.0, 1.1, 0.9], "rnn": [1.0, math.nan, 1]})
    markdown = (comparison_dir / "comparison.md").read_text()
    assert cells(markdown, "rnn")[4:7] == ["none (a seed diverged)", "untested", "-"]
    assert cells(markdown, "attention")[5:7] == ["best", "1"]


def test_marks_and_ranks_never_cross_tasks(tmp_path):
    root = tmp_path / "runs"
    for task, offset in (("mqar", 0.0), ("listops", 5.0)):
        for mixer, losses in (("attention", [1.0, 1.02, 0.98]), ("conv", [2.0, 2.1, 1.9])):
            for seed, loss in enumerate(losses):
                run = write_run(root, f"{task}{mixer}{seed}", mixer=mixer, seed=seed,
                                loss=loss + offset)  # fmt: skip
                data = json.loads((run / "results.json").read_text())
                data["task"] = data["config"]["task"]["name"] = task
                (run / "results.json").write_text(json.dumps(data))
    comparison = build_comparison(load_runs([root]), ["task", "mixer"], "val/loss", None)
    marks = {group.label: comparison.mark(group) for group in comparison.groups}
    for task in ("mqar", "listops"):
        assert (marks[(task, "attention")].verdict, marks[(task, "attention")].rank) == ("best", 1)
        assert (marks[(task, "conv")].verdict, marks[(task, "conv")].rank) == ("separated", 2)


def test_best_over_two_keys_keeps_the_best_combination_on_the_shared_seeds(tmp_path, capsys):
    """The grid at seed 0, seeds 1 and 2 at its best point. Key by key the marginal means would
    pick lr 1e-3 (1.15 against 1.5) and weight decay 0.1: a combination worse than the best."""
    root = tmp_path / "runs"
    grid = {(1e-3, 0.0): 1.1, (1e-3, 0.1): 1.2, (3e-3, 0.0): 2.0, (3e-3, 0.1): 1.0}
    for (lr, wd), loss in grid.items():
        write_run(root, f"{lr}_{wd}_0", mixer="rnn", seed=0, loss=loss, lr=lr, weight_decay=wd)
    for seed, loss in ((1, 1.3), (2, 1.4)):  # worse than 1.1 over 3 seeds: ranked on seed 0
        write_run(
            root, f"best_{seed}", mixer="rnn", seed=seed, loss=loss, lr=3e-3, weight_decay=0.1
        )
    out = tmp_path / "out"
    keys = "optim.lr,optim.weight_decay"
    assert main([str(root), "--best-over", keys, "--out", str(out)]) == 0
    (row,) = read_csv(out / "comparison.csv")
    assert (row["optim.lr_best"], row["optim.weight_decay_best"]) == ("0.003", "0.1")
    assert row["picked"] == "true" and row["n"] == "3" and row["seeds"] == "0;1;2"
    assert float(row["val/loss_mean"]) == pytest.approx(statistics.mean([1.0, 1.3, 1.4]))
    assert row["grid"].startswith("(0.001, 0):1.1:n=1;(0.001, 0.1):1.2:n=1;")
    assert row["val/loss_vs_best"] == "best"  # the kept point's 3 seeds carry the interval
    markdown = (out / "comparison.md").read_text()
    assert cells(markdown, "rnn")[1:4] == ["0.003 (best of 2)", "0.1 (best of 2)", "3"]
    note = "rnn: picked optim.lr=0.003, optim.weight_decay=0.1 by mean val/loss (min)"
    assert "## Best grid point over optim.lr, optim.weight_decay" in markdown
    assert note in markdown and note in capsys.readouterr().out
    assert "warning" not in markdown.lower()  # each row is one config

    # --lr-key is the old name of --best-over
    assert main([str(root), "--lr-key", "optim.weight_decay", "--out", str(out)]) == 0
    old = read_csv(out / "comparison.csv")
    assert main([str(root), "--best-over", "optim.weight_decay", "--out", str(out)]) == 0
    assert read_csv(out / "comparison.csv") == old
    assert old[0]["optim.weight_decay_best"] == "0.1"


def test_an_unknown_best_over_key_is_refused(tmp_path, capsys):
    seeds(tmp_path, "rnn", [1.0])
    assert main([str(tmp_path), "--best-over", "optim.lr,optim.weight_decy"]) == 2
    error = capsys.readouterr().err
    assert "--best-over key 'optim.weight_decy'" in error and "optim.weight_decay" in error
