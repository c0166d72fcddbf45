"""The MAD score in ``mixerlab compare``, on synthetic run folders: per setting the best grid
point, per task the mean over settings, the MAD score the mean over tasks, each with a t-interval
over the per-seed means; and stored references: written from a study, read beside new runs,
refused when the protocol differs, marked stale when a mixer's or a task's code changed."""

from __future__ import annotations

import itertools
import json
import shutil
import statistics
from pathlib import Path

import pytest
from run_folders import read_csv, write_run

from mixerlab.experiments.cli.compare import main
from mixerlab.experiments.compare import code_version, outputs, reference
from mixerlab.experiments.compare.plots import base
from mixerlab.experiments.compare.plots.suite_score import suite_score

T_975_2 = 4.302652729749464  # t(0.975, 2): 3 seeds
SETTINGS = {
    "mad_recall": [{"vocab_size": 16, "seq_len": 128}, {"vocab_size": 16, "seq_len": 256}],
    "mad_memorization": [{"vocab_size": 256, "seq_len": 32}, {"vocab_size": 512, "seq_len": 32}],
}
LRS, DECAYS = (1e-4, 1e-3), (0.0, 0.1)
# each (mixer, task, setting index): the accuracy at the best grid point (lr 1e-3, decay 0.1) by
# seed. The other points score 0.1 less, but for lr 1e-4 without decay: its seed 0 beats every
# run of the best point, its mean does not (the selection rule goes by means)
BEST = {
    ("attention", "mad_recall", 0): (0.90, 0.92, 0.94),
    ("attention", "mad_recall", 1): (0.80, 0.84, 0.82),
    ("attention", "mad_memorization", 0): (0.70, 0.70, 0.76),
    ("attention", "mad_memorization", 1): (0.60, 0.66, 0.63),
    ("rnn", "mad_recall", 0): (0.50, 0.55, 0.60),
    ("rnn", "mad_recall", 1): (0.40, 0.42, 0.44),
    ("rnn", "mad_memorization", 0): (0.30, 0.36, 0.33),
    ("rnn", "mad_memorization", 1): (0.20, 0.21, 0.25),
}


@pytest.fixture(autouse=True)
def tables_only(monkeypatch):
    """These tests read tables and files, never PNGs: seconds saved."""
    monkeypatch.setattr(base, "_REGISTRY", {})
    monkeypatch.setattr(outputs, "metric_figures", lambda comparison: {})
    monkeypatch.setenv("COLUMNS", "250")


def mad_runs(root: Path, mixers=("attention", "rnn"), seeds=(0, 1, 2), **fields) -> Path:
    """A MAD study: every mixer, task, setting, grid point and seed of ``BEST``."""
    for (mixer, task, index), values in BEST.items():
        for lr, decay, seed in itertools.product(LRS, DECAYS, seeds):
            if mixer not in mixers:
                continue
            if (lr, decay) == (1e-3, 0.1):
                acc = values[seed]
            elif (lr, decay) == (1e-4, 0.0):
                acc = max(values) + 0.05 if seed == 0 else values[seed] - 0.3
            else:
                acc = values[seed] - 0.1
            name = f"{mixer}_{task}_{index}_{lr}_{decay}_{seed}"
            write_run(
                root,
                name,
                mixer=mixer,
                seed=seed,
                loss=1 - acc,
                acc=acc,
                lr=lr,
                weight_decay=decay,
                task=task,
                datamodule={**SETTINGS[task][index], "batch_size": 128},
                **fields,
            )
    return root


def score(mixer: str, task: str) -> tuple[float, list[float]]:
    """A task's score by hand: the mean over settings, and each seed's mean over settings."""
    settings = [BEST[mixer, task, index] for index in range(2)]
    per_seed = [statistics.mean(values) for values in zip(*settings, strict=True)]
    return statistics.mean(statistics.mean(v) for v in settings), per_seed


def interval(per_seed: list[float]) -> tuple[float, float]:
    mean, half = statistics.mean(per_seed), T_975_2 * statistics.stdev(per_seed) / 3**0.5
    return mean - half, mean + half


def suite_csv(out: Path) -> dict[str, dict[str, str]]:
    return {row["row"] + ("*" if row["stored"] == "true" else ""): row for row in read_csv(out)}


def test_mad_score_is_the_mean_over_tasks_of_the_mean_over_settings_of_the_best_point(
    tmp_path, capsys
):
    runs = mad_runs(tmp_path / "runs")
    assert main([str(runs), "--out", str(tmp_path / "out")]) == 0
    rows = suite_csv(tmp_path / "out" / "suite_score.csv")
    for mixer in ("attention", "rnn"):
        tasks = {task: score(mixer, task) for task in SETTINGS}
        for task, (value, per_seed) in tasks.items():
            assert float(rows[mixer][f"{task}_score"]) == pytest.approx(value)
            low, high = interval(per_seed)
            assert float(rows[mixer][f"{task}_low"]) == pytest.approx(low)
            assert float(rows[mixer][f"{task}_high"]) == pytest.approx(high)
        overall = statistics.mean(value for value, _ in tasks.values())
        assert float(rows[mixer]["mad_score"]) == pytest.approx(overall)
        per_seed = [statistics.mean(s) for s in zip(*(p for _, p in tasks.values()), strict=True)]
        assert float(rows[mixer]["mad_low"]) == pytest.approx(interval(per_seed)[0])
    printed = capsys.readouterr().out
    # MAD's defaults: val/acc, the lr x weight-decay grid, a row per setting in the usual table
    assert "MAD score (2 of 6 tasks)" in printed
    assert "0.001 (best of 2)" in printed and "0.1 (best of 2)" in printed
    assert "task.datamodule.seq_len" in printed
    assert "tasks of mad no run is of: mad_compression" in printed
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert "## MAD score: val/acc (higher is better) by mixer" in md
    assert "| attention | here |" in md
    assert "MAD score" in (tmp_path / "out" / "report.html").read_text()


def test_two_seeds_give_a_score_without_an_interval_and_say_why(tmp_path, capsys):
    runs = mad_runs(tmp_path / "runs", seeds=(0, 1))
    assert main([str(runs), "--out", str(tmp_path / "out")]) == 0
    rows = suite_csv(tmp_path / "out" / "suite_score.csv")
    assert rows["rnn"]["mad_low"] == "" and rows["rnn"]["mad_seeds"] == "2"
    assert "none (2 seeds, needs 3)" in capsys.readouterr().out


def test_a_row_lacking_a_setting_has_no_score_on_that_task_nor_a_mad_score(tmp_path, capsys):
    runs = mad_runs(tmp_path / "runs")
    for lacking in runs.glob("rnn_mad_recall_1_*"):
        shutil.rmtree(lacking)
    assert main([str(runs), "--out", str(tmp_path / "out")]) == 0
    rows = suite_csv(tmp_path / "out" / "suite_score.csv")
    assert rows["rnn"]["mad_recall_score"] == "" and rows["rnn"]["mad_score"] == ""
    assert rows["rnn"]["mad_memorization_score"] != ""
    printed = capsys.readouterr().out
    assert "- (lacks 1 of 2 settings)" in printed
    assert "rnn (here) lacks settings of mad_recall: seq_len=256, vocab_size=16" in printed


def test_other_tasks_get_no_suite_table_and_no_reference(tmp_path, capsys):
    write_run(tmp_path / "runs", "a0", mixer="attention", seed=0, loss=1.0)
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    assert not (tmp_path / "out" / "suite_score.csv").exists()
    assert main([str(tmp_path / "runs"), "--reference", str(tmp_path / "ref.json")]) == 2
    assert "not all of one suite's tasks (mad: mad_*)" in capsys.readouterr().err


def write_reference(tmp_path: Path, **fields) -> Path:
    """A reference written from a study of attention and rnn, as the baselines will be."""
    study = mad_runs(tmp_path / "study", **fields)
    ref = tmp_path / "ref.json"
    assert (
        main([str(study), "--out", str(tmp_path / "study_out"), "--write-reference", str(ref)]) == 0
    )
    return ref


def test_a_reference_round_trips_and_sits_beside_new_runs(tmp_path, capsys):
    ref = write_reference(tmp_path)
    stored = json.loads(ref.read_text())
    assert stored["suite"] == "mad" and sorted(stored["rows"]) == ["attention", "rnn"]
    assert stored["protocol"]["grid"] == {
        "optim.lr": ["0.0001", "0.001"],
        "optim.weight_decay": ["0", "0.1"],
    }
    assert stored["protocol"]["config"]["task.datamodule.batch_size"] == 128
    assert "mixers/rnn.py" in stored["rows"]["rnn"]["mixer_code"]
    assert "lightning_modules/tasks/_mad.py" in stored["task_code"]["mad_recall"]
    before = suite_csv(tmp_path / "study_out" / "suite_score.csv")
    capsys.readouterr()

    new = mad_runs(tmp_path / "new", mixers=("rnn",))  # rnn again, here: beside its stored row
    out = tmp_path / "out"
    assert main([str(new), "--reference", str(ref), "--out", str(out)]) == 0
    rows = suite_csv(out / "suite_score.csv")
    assert sorted(rows) == ["attention*", "rnn", "rnn*"]
    for name in ("attention", "rnn"):
        for column in ("mad_recall_score", "mad_score", "mad_low", "mad_high", "mad_seeds"):
            assert rows[f"{name}*"][column] == before[name][column]
    assert rows["rnn"]["mad_score"] == rows["rnn*"]["mad_score"]
    assert rows["attention*"]["stale"] == "" and rows["rnn*"]["stale"] == ""
    printed = capsys.readouterr().out
    assert "stored rows: " + str(ref) in printed
    assert "│ attention │ stored │" in printed and "│ rnn       │   here │" in printed


def test_a_differing_protocol_is_refused_naming_the_keys(tmp_path, capsys):
    ref = write_reference(tmp_path)
    capsys.readouterr()
    new = mad_runs(tmp_path / "new", mixers=("rnn",), d_model=128)
    for lacking in new.glob("*_0.0_*"):  # no weight decay 0: a smaller grid
        shutil.rmtree(lacking)
    assert main([str(new), "--reference", str(ref), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "depart from the protocol stored in" in err
    assert "model.d_model (stored 64; here 128)" in err
    assert "grid optim.weight_decay (stored 0, 0.1; here 0.1)" in err
    assert main([str(new), "--reference", str(ref), "--metric", "val/loss"]) == 2
    assert "metric (stored val/acc; here val/loss)" in capsys.readouterr().err


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """The code the fingerprints read, copied, so a test may change it."""
    root = tmp_path / "package"
    for folder in ("mixers", "conf/mixer", "lightning_modules/tasks"):
        shutil.copytree(code_version.ROOT / folder, root / folder)
    monkeypatch.setattr(code_version, "ROOT", root)
    code_version.registered.cache_clear()
    yield root
    code_version.registered.cache_clear()


def test_changed_code_marks_the_stored_rows_it_concerns_stale(tmp_path, package_copy, capsys):
    ref = write_reference(tmp_path)
    new = mad_runs(tmp_path / "new", mixers=("attention",))
    rnn = package_copy / "mixers" / "rnn.py"
    rnn.write_text(rnn.read_text() + "\n# changed\n")
    capsys.readouterr()
    assert main([str(new), "--reference", str(ref), "--out", str(tmp_path / "out")]) == 0
    rows = suite_csv(tmp_path / "out" / "suite_score.csv")
    assert rows["rnn*"]["stale"] == "mixers/rnn.py changed"
    assert rows["attention*"]["stale"] == ""
    printed = capsys.readouterr().out
    assert "stored, stale" in printed
    assert "rnn (stored) is stale: mixers/rnn.py changed" in printed

    generator = package_copy / "lightning_modules" / "tasks" / "_mad.py"
    generator.write_text(generator.read_text() + "\n# changed\n")
    assert main([str(new), "--reference", str(ref), "--out", str(tmp_path / "out")]) == 0
    rows = suite_csv(tmp_path / "out" / "suite_score.csv")
    assert "lightning_modules/tasks/_mad.py changed" in rows["attention*"]["stale"]


def test_a_stored_row_whose_preset_differs_from_the_runs_here_is_stale(tmp_path, capsys):
    ref = write_reference(tmp_path)
    new = mad_runs(tmp_path / "new", mixers=("rnn",))
    for record in new.glob("*/results.json"):
        results = json.loads(record.read_text())
        results["config"]["mixer"]["d_hidden"] = 96
        record.write_text(json.dumps(results))
    assert main([str(new), "--reference", str(ref), "--out", str(tmp_path / "out")]) == 0
    stale = suite_csv(tmp_path / "out" / "suite_score.csv")["rnn*"]["stale"]
    assert stale == "preset differs from the runs here: mixer.d_hidden (stored -; here 96)"


def test_write_reference_refuses_a_study_with_a_row_lacking_a_setting(tmp_path, capsys):
    runs = mad_runs(tmp_path / "runs")
    for lacking in runs.glob("rnn_mad_recall_1_*"):
        shutil.rmtree(lacking)
    assert main([str(runs), "--write-reference", str(tmp_path / "ref.json")]) == 2
    assert "every row must run every setting of the table: rnn lacks mad_recall" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "ref.json").exists()


def test_a_suite_name_reads_and_writes_the_shipped_baselines(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reference, "BASELINES", tmp_path / "baselines")
    runs = mad_runs(tmp_path / "runs")
    assert main([str(runs), "--reference", "mad"]) == 2
    assert "this mixerlab ships none yet" in capsys.readouterr().err
    assert main([str(runs), "--write-reference", "mad"]) == 0
    assert (tmp_path / "baselines" / "mad.json").is_file()
    assert main([str(runs), "--reference", "mad"]) == 0
    assert main([str(runs), "--reference", "lra"]) == 2
    assert "'lra' is neither a suite (mad) nor a .json file" in capsys.readouterr().err


def test_the_suite_score_plot_is_drawn_for_mad_runs_only(tmp_path, monkeypatch):
    plot = base.Plot("suite_score.png", "suite score", suite_score)
    monkeypatch.setattr(base, "_REGISTRY", {plot.file: plot})
    ref = write_reference(tmp_path)  # a stored row among the bars: hatched
    new = mad_runs(tmp_path / "new", mixers=("rnn",))
    assert main([str(new), "--reference", str(ref), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "suite_score.png").read_bytes().startswith(b"\x89PNG")
    write_run(tmp_path / "mqar", "a0", mixer="attention", seed=0, loss=1.0)
    assert main([str(tmp_path / "mqar"), "--out", str(tmp_path / "mqar_out")]) == 0
    assert not (tmp_path / "mqar_out" / "suite_score.png").exists()
