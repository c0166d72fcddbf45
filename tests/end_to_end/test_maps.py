"""``mixerlab maps`` and ``mixerlab compare --maps`` on real (tiny) runs (the ``trained_runs``
fixture): trained and untrained mixers drawn side by side on one example, and each kind of bad
input one message with exit 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mixerlab.experiments import cli

pytestmark = pytest.mark.slow
UNTRAINED = "experiment=quick mixer=mamba model.d_model=16"


def test_two_runs_are_drawn_side_by_side(
    trained_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "maps.png"
    assert cli.main(["maps", *map(str, trained_runs), "--example", "3", "--out", str(out)]) == 0
    assert (
        out.read_bytes().startswith(b"\x89PNG") and "2 run(s) written to" in capsys.readouterr().out
    )
    assert cli.main(["maps", str(trained_runs[0]), "--gradient", "--probes", "0"]) == 0
    assert (trained_runs[0] / "maps.png").is_file()


def test_an_untrained_model_and_a_given_input(
    trained_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trained run beside an untrained Mamba, on token ids from the command line, one layer."""
    out = tmp_path / "given.png"
    argv = [str(trained_runs[0]), "--untrained", UNTRAINED, "--tokens", "3 9 4 9, 5"]
    assert cli.main(["maps", *argv, "--layers", "1", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
    assert "2 run(s) written to" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nowhere"], "no results.json here"),
        ([], "nothing to draw: give run folders, --untrained OVERRIDES, or both"),
        (["{run}", "--example", "100000"], "example 100000 is past the validation set's"),
        (["{run}", "--example", "-1"], "examples count from 0, got example -1"),
        (["{run}", "--probes", "-1"], "--probes is a count of projections"),
        (["{run}", "--layers", "0,2"], "layer 2 is out of range: the model has 2 layers, 0 to 1"),
        (["{run}", "--layers", "first"], "--layers takes layer numbers from 0"),
        (["{run}", "--tokens", "3 x"], "--tokens takes token ids, integers, got '3 x'"),
        (["{run}", "--tokens", "3 99999"], "--tokens: id 99999 is outside the vocabulary"),
        (["{run}", "--tokens", "3 " * 1025], "has 1025 tokens, more than the 1024 drawn"),
        (["--untrained", "experiment=quick mixr=gmlp"], "mixr is not a known key"),
        (["--untrained", "experiment=quick model.d_model=0"], "model.d_model must be >= 1"),
        (["{run}", "--untrained", "experiment=mqar"], "the runs have different tasks"),
        (["--untrained", "task=reversal"], "trains an encoder-decoder (two stacks, two sequences)"),
        (["--untrained", "task=reversal design=prefix_lm"], "trains a prefix LM (model.prefix_lm"),
    ],
)
def test_bad_input_is_one_message(
    trained_runs: list[Path], args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [arg.format(run=trained_runs[0]) for arg in args]
    assert cli.main(["maps", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixerlab maps: error: ") and message in err


def test_a_run_without_checkpoints_says_so(
    trained_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = tmp_path / trained_runs[0].name
    shutil.copytree(trained_runs[0], bare, ignore=shutil.ignore_patterns("checkpoints"))
    assert cli.main(["maps", str(bare)]) == 2
    assert "no checkpoints/best.ckpt or last.ckpt" in capsys.readouterr().err


def test_compare_draws_each_groups_best_run_into_the_report(
    trained_runs: list[Path], tmp_path: Path
) -> None:
    """``compare --maps``: both mixers' maps in maps.png, report.html and comparison.md; a group
    whose only run kept no checkpoint is named as not drawn."""
    bare = tmp_path / "bare" / "gmlp"
    shutil.copytree(trained_runs[0], bare, ignore=shutil.ignore_patterns("checkpoints"))
    record = bare / "results.json"
    record.write_text(record.read_text().replace('"mixer": "attention"', '"mixer": "gmlp"'))
    out = tmp_path / "out"
    argv = [*map(str, trained_runs), str(bare), "--metric", "val/acc", "--maps", "2"]
    assert cli.main(["compare", *argv, "--out", str(out)]) == 0
    assert (out / "maps.png").read_bytes().startswith(b"\x89PNG")
    report = (out / "report.html").read_text()
    section = report[report.index("<h2 id='mixing-maps'>") :]
    assert section.count("<img ") == 1 and "data-task='selective_copy'" in section
    assert "attention (seed 0)" in section and "rnn (seed 0)" in section
    assert "Not drawn: gmlp: no run kept checkpoints/best.ckpt or last.ckpt" in section
    markdown = (out / "comparison.md").read_text()
    assert "## Mixing maps" in markdown and "](maps.png)" in markdown
    assert "- not drawn: gmlp: no run kept" in markdown


def test_compare_maps_past_the_validation_set_is_one_message(
    trained_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(trained_runs[0]), "--maps", "100000", "--out", str(tmp_path)]
    assert cli.main(["compare", *argv]) == 2
    assert "mixerlab compare: error: --maps: example 100000 is past" in capsys.readouterr().err
