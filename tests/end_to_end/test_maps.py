"""``mixerlab maps`` on real (tiny) runs: two trained mixers drawn side by side on one example,
and each kind of bad input one message with exit 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mixerlab.experiments import cli
from mixerlab.experiments.cli.train import main as train

pytestmark = pytest.mark.slow

SWEEP = ["-m", "experiment=quick", "mixer=attention,rnn", "debug=default", "model.d_model=16"]
SWEEP += ["logger=none", "callbacks.progress_bar=false", "study=maps"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("maps")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MIXERLAB_CACHE", str(root / "cache"))
        assert train(SWEEP) == 0
    return sorted(p for p in (root / "studies" / "maps" / "runs").iterdir() if p.is_dir())


def test_two_runs_are_drawn_side_by_side(
    runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "maps.png"
    assert cli.main(["maps", *map(str, runs), "--example", "3", "--out", str(out)]) == 0
    assert (
        out.read_bytes().startswith(b"\x89PNG") and "2 run(s) written to" in capsys.readouterr().out
    )
    assert cli.main(["maps", str(runs[0]), "--gradient", "--probes", "0"]) == 0
    assert (runs[0] / "maps.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nowhere"], "no results.json here"),
        (["{run}", "--example", "100000"], "is past the validation set's"),
        (["{run}", "--probes", "-1"], "--probes is a count of projections"),
    ],
)
def test_bad_input_is_one_message(
    runs: list[Path], args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [arg.format(run=runs[0]) for arg in args]
    assert cli.main(["maps", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixerlab maps: error: ") and message in err


def test_a_run_without_checkpoints_says_so(
    runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = tmp_path / runs[0].name
    shutil.copytree(runs[0], bare, ignore=shutil.ignore_patterns("checkpoints"))
    assert cli.main(["maps", str(bare)]) == 2
    assert "no checkpoints/best.ckpt or last.ckpt" in capsys.readouterr().err
