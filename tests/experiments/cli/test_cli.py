"""The ``mixerlab`` command: dispatch, ``list``, and clean config errors from ``train``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from configs import conf_options, run_config

from mixerlab.experiments import cli
from mixerlab.experiments.cli import _train_argv
from mixerlab.experiments.compare.plots import registered_plots
from mixerlab.mixers import available_mixers


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_mixers_tasks_experiments_and_plots(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    for name in available_mixers():
        assert name in out
    mixers, rest = out.split("mixer presets (mixer=<name>):\n")
    presets = rest.split("\n\n")[0]
    assert "  based " in presets and "  attention " not in presets
    assert "  hybrid " in mixers and "  hybrid " not in presets  # a registered mixer
    for plot in registered_plots():
        assert f"  {plot.file}  " in out and plot.description in out
    assert "Multi-head scaled dot-product self-attention" in out  # describe_mixer's line
    assert "text" in out and "Byte-level language modelling" in out  # task description
    assert "smoke" in out and "Smoke test" in out  # experiment's first comment line
    assert "@package" not in out


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "trian")
    assert code == 2 and "unknown command 'trian'" in err and "train" in err


def test_bench_and_compare_are_dispatched_lazily() -> None:
    for command in ("bench", "compare"):
        with pytest.raises(SystemExit) as info:
            cli.main([command, "--help"])
        assert info.value.code == 0


def train_in(
    capsys: pytest.CaptureFixture[str], cwd: Path, monkeypatch: pytest.MonkeyPatch, *argv: str
) -> tuple[int, str]:
    """``mixerlab train`` in ``cwd``, where a run's default folder (``runs/...``) would go."""
    monkeypatch.chdir(cwd)
    code, _, err = run_cli(capsys, "train", *argv)
    return code, err


def assert_one_clean_message(code: int, err: str, cwd: Path) -> None:
    """Exit 2, one message, no traceback, and no run folder left behind."""
    assert code == 2, err
    assert err.count("mixerlab train:") == 1, err
    assert "Traceback" not in err and "To append to your config" not in err
    assert not (cwd / "runs").exists(), list((cwd / "runs").rglob("*"))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        # the schema
        ("mixer.name=transformerxl", "known mixers: attention"),  # the registry
        ("+mixer.n_head=2", "did you mean mixer.n_heads?"),
        ("model.d_model=wide", "model.d_model must be an integer, got 'wide'"),
        ("+task.datamodule.batch_sise=3", "(did you mean task.datamodule.batch_size?)"),
        ("task.name=nope", "known tasks: addition, copying, induction_heads"),
        ("model.n_layers=0", "model.n_layers must be >= 1, got 0"),
        # a mistyped key: the closest key at its level, not Hydra's advice to append it
        ("model.d_modle=64", "model.d_modle is not a known key (did you mean model.d_model?)"),
        ("optim.lrr=1e-3", "optim.lrr is not a known key (did you mean optim.lr?)"),
        ("trainer.max_step=9", "(did you mean trainer.max_steps?); trainer accepts: "),
        ("mixer.n_head=2", "(did you mean mixer.n_heads?); mixer accepts: "),
        ("hydra.run.dri=x", "(did you mean hydra.run.dir?)"),
        ("seedd=1", "seedd is not a known key (did you mean seed?)"),
        ("mixr=gmlp", "(did you mean mixer?)"),  # a group, selected by a top-level key
        ("experimnt=mqar", "(did you mean experiment?)"),  # a group that is no key
        # a mistyped group option: the closest option of the group
        ("mixer=gmpl", "the config group mixer has no option 'gmpl' (did you mean mixer=gmlp?)"),
        ("experiment=mqr", "no option 'mqr' (did you mean experiment=mqar?); its options: "),
        ("task=mqa", "no option 'mqa' (did you mean task=mqar?); its options: "),
        ("trainer=gpuu", "no option 'gpuu' (did you mean trainer=gpu?); its options: "),
        # anything else Hydra cannot compose: its message, then ours
        ("~model.d_modle", "'model.d_modle' does not exist.\nmixerlab train: the config could not"),
    ],
)
def test_config_errors_exit_2_with_one_message_and_no_run_folder(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    override: str,
    expected: str,
) -> None:
    code, err = train_in(capsys, tmp_path, monkeypatch, override)
    assert expected in err
    assert_one_clean_message(code, err, tmp_path)


def test_plugin_mixer_without_a_name_asks_for_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hydra names the run folder after mixer.name: the config is checked before that."""
    code, err = train_in(capsys, tmp_path, monkeypatch, "mixer=plugin")
    assert "mixer.name=<registered name>" in err
    assert f"registered mixers: {', '.join(available_mixers())}" in err
    assert_one_clean_message(code, err, tmp_path)


def test_an_option_far_from_any_lists_the_options_only(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, err = train_in(capsys, tmp_path, monkeypatch, "mixer=transformerxl")
    options = ", ".join(conf_options("mixer"))
    assert "did you mean" not in err and f"its options: {options}\n" in err
    assert_one_clean_message(code, err, tmp_path)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("task.datamodule.seq_len=0", "seq_len must be a positive integer"),
        ("callbacks.checkpoint._target_=nowhere.Checkpoint", "Error locating target 'nowhere."),
    ],
)
def test_errors_building_the_run_exit_2_once_and_leave_no_folder(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    override: str,
    expected: str,
) -> None:
    """Values only the built objects can judge (DataModule arguments, a _target_, Trainer
    settings) are config errors too, found after Hydra made the run folder: it goes again, and
    the error is printed once (not also in an end-of-run summary)."""
    handlers = logging.getLogger().handlers[:]
    code, err = train_in(capsys, tmp_path, monkeypatch, "logger=none", override)
    assert logging.getLogger().handlers == handlers  # Hydra's, for the run, are gone again
    assert "mixerlab train: building the run from the config failed" in err
    assert err.count(expected) == 1, err
    assert_one_clean_message(code, err, tmp_path)


def test_a_resumed_runs_folder_is_kept_when_building_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["logger=none"]))
    record = {"config": run_config("logger=none", "task.datamodule.seq_len=0")}  # this config's
    (run_dir / "results.json").write_text(json.dumps(record))
    code, err = train_in(
        capsys, tmp_path, monkeypatch, f"resume={run_dir}", "task.datamodule.seq_len=0"
    )
    assert code == 2 and "seq_len must be a positive integer" in err
    assert (run_dir / ".hydra" / "overrides.yaml").exists()
    assert (run_dir / "results.json").exists() and (run_dir / "train.log").exists()


def test_list_help_goes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "list", "--help")
    assert code == 0 and "usage: mixerlab list" in out and not err
    code, out, err = run_cli(capsys, "list", "extra")
    assert code == 2 and "usage: mixerlab list" in err and not out


@pytest.mark.slow
def test_config_error_through_the_console_script(tmp_path: Path) -> None:
    """The real process: exit status 2, the known mixers on stderr, no Python traceback."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "mixerlab.experiments.cli", "train", "mixer.name=nope"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "mixer.name='nope' is not a registered mixer" in proc.stderr
    assert all(name in proc.stderr for name in available_mixers())
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("results.json"))


def test_cfg_job_prints_the_composed_config(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "train", "--cfg", "job", "mixer=rnn", "model.d_model=64")
    assert code == 0
    cfg = yaml.safe_load(out)
    assert cfg["mixer"]["name"] == "rnn" and cfg["model"]["d_model"] == 64


def test_help_explains_resume(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "train", "--help")
    assert code == 0 and "resume=<run dir>" in out and "mixer: attention" in out


def test_resume_reuses_the_runs_overrides_and_directory(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump(["mixer=rnn", "trainer.max_steps=10"])
    )
    argv = _train_argv.expand_resume(
        ["--config-dir", "/x", f"resume={tmp_path}", "trainer.max_steps=20"]
    )
    assert argv == [
        "--config-dir",
        "/x",
        "mixer=rnn",
        "trainer.max_steps=20",
        f"hydra.run.dir={tmp_path.resolve()}",
    ]


def test_hydra_flags_and_their_values_are_told_from_overrides() -> None:
    argv = [
        "-m", "--config-dir", "/x", "mixer=rnn", "-cn=config", "--cfg", "job", "--resolve",
        "--info", "defaults", "+model.d_model=64", "-i", "~logger", "seed=-1",
    ]  # fmt: skip
    flags, overrides = _train_argv.split_hydra_argv(argv)
    assert flags == [
        "-m", "--config-dir", "/x", "-cn=config", "--cfg", "job", "--resolve",
        "--info", "defaults", "-i",
    ]  # fmt: skip
    assert overrides == ["mixer=rnn", "+model.d_model=64", "~logger", "seed=-1"]


def test_resume_keeps_flags_given_anywhere_in_front(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["mixer=rnn"]))
    argv = _train_argv.expand_resume([f"resume={tmp_path}", "--cfg", "job", "seed=1", "-m"])
    run_dir = f"hydra.run.dir={tmp_path.resolve()}"
    assert argv == ["--cfg", "job", "-m", "mixer=rnn", "seed=1", run_dir]


def test_resume_of_a_folder_that_is_no_run_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run_cli(capsys, "train", f"resume={tmp_path}")
    assert code == 2 and "overrides.yaml not found" in err


def test_a_mistyped_option_in_a_sweep_list_leaves_no_sweep_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, err = train_in(capsys, tmp_path, monkeypatch, "-m", "mixer=attention,gmpl")
    assert "(did you mean mixer=gmlp?)" in err
    assert_one_clean_message(code, err, tmp_path)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "multirun").exists()


@pytest.mark.slow  # one real (4-step) job besides the invalid one
def test_a_sweep_job_with_an_invalid_config_is_named_and_leaves_no_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = tmp_path / "sweep"
    argv = ["-m", "experiment=smoke", "debug=default", "logger=none", f"hydra.sweep.dir={sweep}"]
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "train", *argv, "model.d_model=-4,32")
    assert code == 1
    assert "mixerlab train: job 0 (" in err and "model.d_model must be >= 1, got -4" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in sweep.iterdir()) == ["1_attention_text", "multirun.yaml"]
    assert "sweep of 2 job(s)" in out
    assert "job 0                        no folder: its config was invalid" in out


@pytest.mark.parametrize(
    ("flags", "refusal"),
    [
        (["--resolve"], "The --resolve flag can only be used in conjunction with --cfg or --help"),
        (["-m", "--cfg", "job"], "Only one of --run, --multirun, --cfg, --info and --shell_"),
        (["--info", "--run"], "Only one of --run, --multirun, --cfg, --info and --shell_"),
    ],
)
def test_flags_hydra_refuses_together_are_one_message(
    flags: list[str],
    refusal: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, err = train_in(capsys, tmp_path, monkeypatch, *flags, "mixer=rnn")
    assert_one_clean_message(code, err, tmp_path)
    assert refusal in err and err.rstrip().endswith("; see `mixerlab train --help`")


def test_each_command_is_a_module_that_declares_its_name_and_help() -> None:
    commands = cli.available_commands()
    assert [c.name for c in commands] == [
        "bench", "compare", "dashboard", "list", "maps", "new-mixer", "study", "train",
        "wandb-sweep",
    ]  # fmt: skip
    for command in commands:
        assert command.module.startswith("mixerlab.experiments.cli.") and command.help


@pytest.mark.slow  # fresh interpreters
def test_commands_are_imported_only_when_they_run() -> None:
    """``mixerlab --help`` imports no command, and ``mixerlab list`` does not load Hydra."""
    script = (
        "import contextlib, io, sys; from mixerlab.experiments.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()): code = main(sys.argv[1:])\n"
        "ours = [m for m in sys.modules if m.startswith('mixerlab.experiments.cli.')]\n"
        "print(code, ours, 'hydra' in sys.modules)"
    )
    for argv, expected in (
        (["--help"], "0 [] False"),
        (["list"], "0 ['mixerlab.experiments.cli.list_components'] False"),
    ):
        done = subprocess.run(
            [sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=300
        )
        assert done.stdout.splitlines()[-1] == expected, done.stderr[-2000:]
