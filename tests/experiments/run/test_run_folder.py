"""A run folder belongs to the config it was made with: what is compared, what a folder of
another config is told, what ``overwrite=true`` discards, and what a resume starts from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from configs import TINY, compose_config, run_config

from mixerlab.experiments.cli._train_argv import expand_resume
from mixerlab.experiments.cli.train import main
from mixerlab.experiments.run.run_folder import ABSENT, check_run_dir, differences, discard_run
from mixerlab.experiments.run.schema import ConfigError
from mixerlab.experiments.run.start_checkpoint import Start, check_budget, start_checkpoint

RUN = [*TINY, "logger=none"]


def write_record(run_dir: Path, *overrides: str, status: str = "running") -> dict:
    """A results.json as a run of these overrides leaves it."""
    record = {"status": status, "last_step": 2, "best": {}, "config": run_config(*overrides)}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(record))
    return record


# ------------------------------------------------------------------------ what is compared
def test_differences_name_each_key_with_both_values() -> None:
    old = {"optim": {"lr": 0.1, "betas": [0.9, 0.95]}, "logger": {"mode": "offline"}, "a": 1}
    new = {"optim": {"lr": 0.2, "betas": [0.9, 0.99]}, "logger": {}, "b": {}}
    assert differences(old, new) == [
        ("a", 1, ABSENT),
        ("b", ABSENT, {}),
        ("optim.betas", [0.9, 0.95], [0.9, 0.99]),  # a list is one value
        ("optim.lr", 0.1, 0.2),
    ]  # the logger is not part of a run's identity
    assert differences(old, old) == []


def test_a_folder_of_another_config_is_refused_naming_the_keys_and_the_fix(
    tmp_path: Path,
) -> None:
    write_record(tmp_path, *RUN)
    with pytest.raises(ConfigError) as info:
        check_run_dir(compose_config(*RUN, "optim.lr=0.01", "model.d_model=48"), tmp_path)
    message = str(info.value)
    assert "holds a run (running, step 2) of another config; 3 keys differ" in message
    assert "  - model.d_model: 32 there, 48 now" in message
    assert "  - optim.lr: 0.003 there, 0.01 now" in message
    assert "  - optim.optimizer.lr: 0.003 there, 0.01 now" in message  # follows optim.lr
    assert "overwrite=true" in message and "hydra.run.dir" in message
    with pytest.raises(ConfigError, match=r"mixer\.name: 'attention' there, 'gmlp' now"):
        check_run_dir(compose_config(*RUN, "mixer=gmlp"), tmp_path)


def test_the_budget_and_what_only_shows_the_run_may_change(tmp_path: Path) -> None:
    record = write_record(tmp_path, *RUN)
    # the LR schedule's length follows trainer.max_steps: it is part of the budget
    longer = compose_config(*RUN, "trainer.max_steps=8")
    assert check_run_dir(longer, tmp_path) == record
    shown = compose_config(*TINY, "logger=csv", "callbacks.progress_bar=true", "cache_dir=/x")
    assert check_run_dir(shown, tmp_path) == record
    assert check_run_dir(compose_config(*RUN, "overwrite=true", "seed=3"), tmp_path) is None
    assert check_run_dir(compose_config(*RUN), tmp_path / "new") is None


def test_a_folder_whose_config_is_unknown_is_refused(tmp_path: Path) -> None:
    cfg = compose_config(*RUN)
    (tmp_path / "results.json").write_text('{"status": "runn')
    with pytest.raises(ConfigError, match=r"config is unknown: .*results\.json cannot be read"):
        check_run_dir(cfg, tmp_path)
    (tmp_path / "results.json").write_text('{"status": "finished"}')
    with pytest.raises(ConfigError, match=r"results\.json records no config.*overwrite=true"):
        check_run_dir(cfg, tmp_path)
    (tmp_path / "results.json").unlink()
    (tmp_path / "checkpoints").mkdir()
    assert check_run_dir(cfg, tmp_path) is None  # an empty folder holds no run
    torch.save({"state_dict": {}, "global_step": 1}, tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match=r"holds checkpoints but no results\.json"):
        check_run_dir(cfg, tmp_path)


def test_overwrite_discards_only_what_a_run_wrote(tmp_path: Path) -> None:
    ours = ["results.json", "metrics.csv", "checkpoints/last.ckpt", "checkpoints/best.ckpt"]
    theirs = [".hydra/config.yaml", "train.log", "wandb/run-1/x", "notes.txt", "checkpoints/a.txt"]
    for name in ours + theirs:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    with pytest.raises(ConfigError, match=r"best\.ckpt is one of the checkpoints overwrite"):
        discard_run(tmp_path, str(tmp_path / "checkpoints" / "best.ckpt"))
    assert all((tmp_path / name).exists() for name in ours)  # refused: nothing removed
    removed = discard_run(tmp_path, "elsewhere.ckpt")
    assert sorted(removed) == sorted(tmp_path / name for name in ours)
    assert all((tmp_path / name).exists() for name in theirs)
    (tmp_path / "checkpoints" / "a.txt").unlink()
    (tmp_path / "checkpoints" / "last.ckpt").write_text("x")
    discard_run(tmp_path)
    assert not (tmp_path / "checkpoints").exists()  # left empty: removed


def test_resuming_repeats_a_runs_overrides_but_not_overwrite(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()
    saved = ["mixer=gmlp", "overwrite=true"]
    (tmp_path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(saved))
    run_dir = f"hydra.run.dir={tmp_path.resolve()}"
    assert expand_resume([f"resume={tmp_path}"]) == ["mixer=gmlp", run_dir]
    given = expand_resume([f"resume={tmp_path}", "overwrite=true"])
    assert given == ["mixer=gmlp", "overwrite=true", run_dir]  # asked for again: kept


def test_a_checkpoint_past_the_budget_is_refused(tmp_path: Path) -> None:
    config = run_config(*RUN)  # trainer.max_steps=4
    check_budget(Start("x.ckpt", {"state_dict": {}, "global_step": 4}), config)
    with pytest.raises(ConfigError, match=r"max_steps=4, but checkpoint x\.ckpt has already"):
        check_budget(Start("x.ckpt", {"state_dict": {}, "global_step": 6}), config)


def test_a_run_folder_resumes_from_its_own_checkpoint_not_ckpt_path(tmp_path: Path) -> None:
    given = tmp_path / "given.ckpt"
    torch.save({"state_dict": {}, "global_step": 1}, given)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    own = tmp_path / "run" / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {}, "global_step": 3}, own)
    with start_checkpoint({"ckpt_path": str(given)}, tmp_path / "run") as start:
        assert start.path == str(own)  # ckpt_path says where the run began, at its first launch
    with start_checkpoint({"ckpt_path": str(given)}, tmp_path / "new") as start:
        assert start.path == str(given)


def test_a_refused_command_leaves_the_run_folder_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    write_record(run_dir, *RUN)
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(RUN))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert main([*RUN, "seed=1", f"hydra.run.dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert "mixerlab train: run folder" in err and "  - seed: 0 there, 1 now" in err
    assert "Traceback" not in err
    # .hydra/ still says how the run was made, so `resume=<dir>` repeats that
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
