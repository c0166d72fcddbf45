"""The one module that reaches past Hydra's public API, against the installed Hydra: the version
it was checked on, and the two things it relies on (``@hydra.main`` reads ``sys.argv``; its
parser reads flags as the adapter expects)."""

from __future__ import annotations

import sys
from importlib.metadata import version

import hydra
import pytest
from omegaconf import DictConfig

from mixerlab.experiments.cli._hydra_adapter import CHECKED_ON, parse_flags, run_app


def test_the_installed_hydra_is_the_one_the_adapter_was_checked_on() -> None:
    installed = version("hydra-core")
    assert installed == CHECKED_ON, (
        f"mixerlab.experiments.cli._hydra_adapter was checked on hydra-core {CHECKED_ON}; this is "
        f"{installed}. Run tests/experiments/cli and tests/end_to_end/test_cli_fuzz.py, then "
        "set CHECKED_ON"
    )


def test_flags_are_read_as_hydra_main_reads_them() -> None:
    args = parse_flags(["-m", "--cfg", "job", "mixer=rnn", "--info", "defaults", "--resolve"])
    assert args is not None and args.multirun and args.resolve
    assert (args.cfg, args.info, args.overrides) == ("job", "defaults", ["mixer=rnn"])
    abbreviated = parse_flags(["--res", "--multi"])  # argparse's prefixes, as Hydra takes them
    assert abbreviated is not None and abbreviated.resolve and abbreviated.multirun


@pytest.mark.parametrize("argv", [["--cfg", "nope"], ["--config-name"], ["--version"]])
def test_what_hydras_parser_refuses_is_left_to_hydra_and_prints_nothing(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert parse_flags(argv) is None
    assert capsys.readouterr() == ("", "")


@hydra.main(version_base="1.3", config_path="pkg://mixerlab.conf", config_name="config")
def _app(cfg: DictConfig) -> None:
    raise AssertionError("--cfg job prints the config and runs nothing")


def test_an_app_gets_the_given_argv_and_sys_argv_is_restored(
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = list(sys.argv)
    run_app(_app, ["--cfg", "job", "+given=42"], script=__file__)
    assert "given: 42" in capsys.readouterr().out
    assert sys.argv == before
