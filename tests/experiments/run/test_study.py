"""Studies without training: the job-name rule, the study name's rule, study.yaml (written,
grown, read back, taken back after a launch that trained nothing), the folders Hydra is given
with and without a study, what git keeps of a study, and what a run that cannot continue its
folder's record discards (and puts back when a config error stops it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from configs import TINY, compose_config, run_config
from omegaconf import OmegaConf

from mixerlab.experiments.cli._train_argv import study_launch
from mixerlab.experiments.cli.train import main, record_study_command
from mixerlab.experiments.run.run_folder import restart_from_scratch, restore_run_files
from mixerlab.experiments.run.schema import ConfigError
from mixerlab.experiments.run.study import (
    MAX_JOB_NAME_BYTES,
    Command,
    StudyError,
    check_name,
    forget_command,
    job_name,
    read_study,
    record_command,
    study_dir,
)
from mixerlab.experiments.run.train import train

ROOT = Path(__file__).resolve().parents[3]
RUN = [*TINY, "logger=none"]


# --------------------------------------------------------------------------------- job names
def test_a_job_is_named_by_its_own_overrides_sorted_less_what_names_no_run() -> None:
    overrides = [
        "seed=0", "optim.lr=0.0001", "study=lr", "experiment=mqar", "sweep=mixers_lr",
        "launcher=joblib", "logger=none", "logger.mode=offline", "~logger", "cache_dir=/tmp/c",
        "callbacks.progress_bar=false", "overwrite=true", "mixer=attention", "model.d_model=32",
    ]  # fmt: skip
    assert job_name(overrides) == "mixer=attention,model.d_model=32,optim.lr=0.0001,seed=0"
    assert job_name(reversed(overrides)) == job_name(overrides)  # order typed does not matter
    # a key that only starts like an excluded one stays, and so do + and the value as typed
    kept = ["+loggers=1", "studying=2", "+model.x=3"]
    assert job_name(kept) == "+loggers=1,+model.x=3,studying=2"
    assert job_name([]) == job_name(["study=x", "logger=none"]) == "default"


def test_a_job_name_is_one_valid_folder_name_for_any_value() -> None:
    # a file path as a value is escaped as in a URL, and '%' too, so names never meet
    assert job_name(["ckpt_path=/a/b.ckpt"]) == "ckpt_path=%2Fa%2Fb.ckpt"
    assert job_name(["x=a%2Fb"]) == "x=a%252Fb" != job_name(["x=a/b"])
    assert "/" not in job_name(["x=a\\b/c"]) and "\n" not in job_name(["x='a\nb'"])
    long = [f"model.key_{i}={'v' * 20}" for i in range(20)]
    name = job_name(long)
    assert len(name.encode()) <= MAX_JOB_NAME_BYTES and re.search(r"~[0-9a-f]{12}$", name)
    assert name == job_name(long)  # stable
    assert name != job_name([*long[:-1], "model.key_19=other"])  # the hash tells them apart


# ------------------------------------------------------------------------------- study names
@pytest.mark.parametrize("name", ["lr_grid", "mixers-mqar-2026", "A1", 2024])
def test_a_study_name_of_letters_digits_underscores_and_dashes(name: object) -> None:
    assert check_name(name) == str(name)
    assert run_config(*RUN, f"study={name}")["study"] == str(name)  # digits alone stay text


@pytest.mark.parametrize("name", ["a/b", "../up", "a b", "x.y", "", "é", "n" * 101])
def test_a_bad_study_name_is_one_message_naming_the_rule(name: str) -> None:
    with pytest.raises(StudyError, match=r"letters, digits, '_' and '-' only"):
        check_name(name)
    with pytest.raises(ConfigError, match=r"is not a study name: letters, digits") as info:
        run_config(*RUN, f"study='{name}'")
    assert str(info.value).count("study=") == 2  # one problem: the name, and an example


def test_a_bad_study_name_on_the_command_line_exits_2_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["-m", "seed=0,1", "study=a/b"]) == 2
    err = capsys.readouterr().err
    assert err.count("mixerlab train:") == 1 and "is not a study name" in err
    assert main(["study=x", "hydra.run.dir=elsewhere"]) == 2
    assert "study=x places its runs itself" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_launch_that_trains_nothing_leaves_no_command_in_the_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*RUN, "model.d_model=wide", "study=demo"]) == 2  # the schema refuses it
    assert "model.d_model must be an integer" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no study.yaml, no run folder
    record_command("demo", Command(("seed=0",)))
    assert main([*RUN, "mixer=gmpl", "study=demo"]) == 2  # Hydra cannot compose it
    assert read_study("demo").commands == [Command(("seed=0",))]  # the study as it was
    assert main(["--cfg", "job", "study=demo", "seed=5"]) == 0  # shows a config, trains nothing
    assert read_study("demo").commands == [Command(("seed=0",))]


def test_the_log_says_when_a_study_begins_and_when_it_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "studies" / "demo" / "study.yaml"
    assert record_study_command(("demo", Command(("seed=0,1",), multirun=True)))
    assert f"mixerlab: study demo: new, its command recorded in {path}" in capsys.readouterr().err
    assert record_study_command(("demo", Command(("seed=2,3",), multirun=True)))
    assert f"a new command, appended to {path} (2 commands)" in capsys.readouterr().err
    assert not record_study_command(("demo", Command(("seed=2,3",), multirun=True)))
    assert capsys.readouterr().err == ""
    assert not record_study_command(None)


def test_the_study_a_command_line_trains_in_and_the_command_it_records() -> None:
    launch = study_launch(["-m", "--config-dir", "/c", "seed=0,1", "study=lr", "logger=none"])
    assert launch == ("lr", Command(("seed=0,1",), multirun=True))  # logger: this launch's only
    shown = ["optim.lr=1e-3", "callbacks.progress_bar=false", "overwrite=true", "study=lr"]
    assert study_launch(shown) == ("lr", Command(("optim.lr=1e-3",)))
    parallel = ["-m", "seed=0,1", "launcher=joblib", "hydra.launcher.n_jobs=2", "study=lr"]
    assert study_launch(parallel) == ("lr", Command(("seed=0,1",), multirun=True))  # how, not what
    assert study_launch(["seed=1", "study='2024'"]) == ("2024", Command(("seed=1",)))
    for no_study in (["seed=1"], ["study=null"], ["--cfg", "job", "study=x"], ["study=x", "-i"]):
        assert study_launch(no_study) is None
    assert study_launch(["resume=studies/x/runs/seed=0", "study=x"]) is None  # continues a job


# -------------------------------------------------------------------------------- study.yaml
def test_study_yaml_is_written_once_grows_with_new_commands_and_reads_back(
    tmp_path: Path,
) -> None:
    first = Command(("seed=0,1", "optim.lr=1e-3"), multirun=True)
    assert record_command("lr", first, tmp_path) == "created"
    path = tmp_path / "studies" / "lr" / "study.yaml"
    assert yaml.safe_load(path.read_text()) == {
        "name": "lr",
        "commands": [{"overrides": ["seed=0,1", "optim.lr=1e-3"], "multirun": True}],
    }
    same = Command(("optim.lr=1e-3", "seed=0,1"), multirun=True)  # typed in another order
    assert record_command("lr", same, tmp_path) == "known"
    assert record_command("lr", Command(("seed=0,1", "optim.lr=1e-3")), tmp_path) == "appended"
    more = Command(("seed=2,3", "optim.lr=1e-3"), multirun=True)
    assert record_command("lr", more, tmp_path) == "appended"  # more seeds: the study grows
    study = read_study("lr", tmp_path)
    assert study.name == "lr" and study.folder == study_dir("lr", tmp_path)
    assert study.runs == tmp_path / "studies" / "lr" / "runs"
    assert [c.multirun for c in study.commands] == [True, False, True]
    assert study.commands[2].argv("lr") == ["-m", "seed=2,3", "optim.lr=1e-3", "study=lr"]
    assert read_study(study.folder) == study  # by its folder too
    assert not list(path.parent.glob(".*.tmp"))  # written atomically, nothing left over

    forget_command("lr", more, tmp_path)
    assert len(read_study("lr", tmp_path).commands) == 2
    forget_command("lr", first, tmp_path)
    forget_command("lr", Command(("seed=0,1", "optim.lr=1e-3")), tmp_path)
    assert not (tmp_path / "studies").exists()  # a study of no command is no study


def test_a_missing_or_damaged_study_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match=r"no study in .*studies/nope: .*study\.yaml not found"):
        read_study("nope", tmp_path)
    (tmp_path / "studies" / "bad").mkdir(parents=True)
    (tmp_path / "studies" / "bad" / "study.yaml").write_text("name: bad\n")
    with pytest.raises(StudyError, match=r"study\.yaml cannot be read \(KeyError"):
        read_study("bad", tmp_path)


# ----------------------------------------------------------------------- the folders Hydra uses
def _folders(*overrides: str) -> tuple[str, str, str]:
    cfg = compose_config(*overrides, hydra=True)
    OmegaConf.update(cfg, "hydra.job.num", 3)
    keys = ("run.dir", "sweep.dir", "sweep.subdir")
    return tuple(str(OmegaConf.select(cfg, f"hydra.{key}")) for key in keys)


def test_without_a_study_the_run_folders_are_as_before() -> None:
    run, sweep, job = _folders("mixer=gmlp", "seed=1")
    assert re.fullmatch(r"runs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-\d{6}_gmlp_text", run), run
    assert re.fullmatch(r"runs/multirun/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-\d{6}_text", sweep), sweep
    assert job == "3_gmlp_text"


def test_a_study_puts_each_job_in_a_folder_named_by_its_overrides() -> None:
    run, sweep, job = _folders("study=demo", "seed=1", "mixer=gmlp", "logger=none")
    assert run == "studies/demo/runs/mixer=gmlp,seed=1"
    assert (sweep, job) == ("studies/demo/runs", "mixer=gmlp,seed=1")
    assert _folders("study=demo")[0] == "studies/demo/runs/default"


# --------------------------------------------------------------------------- what git keeps
def test_git_keeps_a_studys_records_and_leaves_out_checkpoints_logs_and_machine_paths(
    tmp_path: Path,
) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    shutil.copy(ROOT / ".gitignore", tmp_path / ".gitignore")
    job = "studies/demo/runs/mixer=gmlp,seed=0"
    kept = [
        "studies/demo/study.yaml", "studies/demo/README.md", "studies/demo/comparison/table.md",
        "studies/demo/comparison/curves.png", f"{job}/results.json", f"{job}/metrics.csv",
        f"{job}/.hydra/config.yaml", f"{job}/.hydra/overrides.yaml",
    ]  # fmt: skip
    ignored = [
        f"{job}/checkpoints/last.ckpt", f"{job}/checkpoints/best.ckpt", f"{job}/train.log",
        f"{job}/wandb/offline-run-1/run-1.wandb", f"{job}/.hydra/hydra.yaml",
        "studies/demo/runs/multirun.yaml", f"{job}/.results.json.123.tmp", "runs/a/results.json",
        "studies/demo/comparison/report.html",  # about 1 MB, written again by mixerlab compare
    ]  # fmt: skip
    for name in kept + ignored:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    check = subprocess.run(
        ["git", "check-ignore", "--no-index", *kept, *ignored],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert sorted(check.stdout.split()) == sorted(ignored)


# ------------------------------------------------------------- a record with no checkpoint
def _stale_run(run_dir: Path, *overrides: str) -> dict[str, bytes]:
    """A run folder as a fresh clone has it for a job killed mid-run: a `running` record and
    metrics rows, no checkpoint."""
    record = {"status": "running", "last_step": 3, "wandb_run_id": "stale", "best": {}}
    record["config"] = run_config(*overrides)
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps(record))
    (run_dir / "metrics.csv").write_text("step,wall_s,train/loss\n1,500.0,99.0\n3,1000.0,98.0\n")
    return {name: (run_dir / name).read_bytes() for name in ("results.json", "metrics.csv")}


def test_what_a_restart_discards_is_said_and_can_be_put_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    before = _stale_run(tmp_path / "run", *RUN)
    saved = restart_from_scratch(tmp_path / "run")
    assert not (tmp_path / "run" / "results.json").exists()
    assert not (tmp_path / "run" / "metrics.csv").exists()
    assert (
        "no checkpoint of this unfinished run here: training it from the start (its running "
        "record at step 3 and 2 rows of metrics.csv discarded)" in caplog.text
    )
    restore_run_files(saved)
    assert {n: (tmp_path / "run" / n).read_bytes() for n in before} == before
    assert restart_from_scratch(tmp_path / "new") == {}  # nothing there: nothing said


def test_a_config_error_after_the_discard_puts_the_old_run_back(tmp_path: Path) -> None:
    """n_heads=3 does not divide d_model=32: found building the model, after the discard."""
    before = _stale_run(tmp_path / "run", *RUN, "mixer.n_heads=3")
    with pytest.raises(ConfigError, match="divisible by n_heads"):
        train(compose_config(*RUN, "mixer.n_heads=3"), tmp_path / "run")
    assert {n: (tmp_path / "run" / n).read_bytes() for n in before} == before
