"""The task registry: registration, discovery, clear errors, plugins and the one-file extension."""

from __future__ import annotations

import json
import sys
import textwrap
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from mixerlab.lightning_modules.tasks import (
    TaskDataModule,
    available_tasks,
    build_task,
    describe_task,
    get_task_class,
    register_task,
    task_arguments,
)
from mixerlab.lightning_modules.tasks._base import ENTRY_POINT_GROUP, TASKS

# A complete new task: the one file the extension test adds (and the plugin test installs).
ECHO_TASK = '''
"""A throwaway task of the tests: one new file is all a task takes."""

import numpy as np

from mixerlab.lightning_modules.tasks import Part, SyntheticTaskDataModule, register_task


@register_task("echo", task_type="lm", causal=True)
class EchoDataModule(SyntheticTaskDataModule):
    """Echo - predict the token just read."""

    def __init__(self, *, seq_len=8, batch_size=8, seed=0, num_workers=0, cache_dir=None):
        settings = {"seq_len": seq_len}
        super().__init__(
            params={},
            train_parts=[Part("train", 64, settings)],
            val_parts=[Part("val", 16, settings)],
            vocab_size=8,
            max_len=seq_len,
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
            cache_dir=cache_dir,
        )

    def generate(self, rng, n, *, seq_len):
        inputs = rng.integers(1, 8, size=(n, seq_len))
        return inputs, inputs.copy()
'''
ECHO_CONF = "name: echo\ndatamodule:\n  seq_len: 8\n  batch_size: 8\n"


def _conf_files() -> dict[str, dict]:
    folder = files("mixerlab.conf") / "task"
    return {
        entry.name.removesuffix(".yaml"): yaml.safe_load(entry.read_text())
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    }


def _builtin_tasks() -> list[str]:
    builtin = "mixerlab.lightning_modules.tasks."
    return [
        name for name in available_tasks() if get_task_class(name).__module__.startswith(builtin)
    ]


def test_every_conf_file_names_a_registered_task_and_every_builtin_has_one() -> None:
    confs = _conf_files()
    for stem, spec in confs.items():
        assert spec["name"] == stem, f"conf/task/{stem}.yaml names {spec['name']!r}"
        assert stem in available_tasks()
        # type, causal, class: the registration's; defaults: extending another task's config
        assert set(spec) - {"defaults"} == {"name", "datamodule"}
    assert set(_builtin_tasks()) == set(confs)
    assert {"text", "mqar", "selective_copy", "induction_heads", "listops"} <= set(confs)


@pytest.mark.parametrize("name", sorted(_conf_files()))
def test_conf_arguments_are_the_task_arguments(name: str) -> None:
    accepted = task_arguments(name)
    assert set(_conf_files()[name]["datamodule"]) <= set(accepted)
    assert not {"seed", "cache_dir"} & set(accepted)  # the run sets them


def test_registration_declares_name_type_and_causality() -> None:
    kinds = {
        name: (get_task_class(name).task_type, get_task_class(name).causal)
        for name in _builtin_tasks()
    }
    assert kinds["listops"] == ("classification", False)
    assert kinds["text"] == kinds["mqar"] == ("lm", True)
    for name in available_tasks():
        assert get_task_class(name).name == name
        assert describe_task(name) and "\n" not in describe_task(name)
    assert describe_task("mqar").startswith("Multi-query associative recall")


def test_unknown_task_and_argument_list_what_is_known(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown task 'nope'; known tasks: .*mqar"):
        build_task("nope", seed=0, cache_dir=None)
    with pytest.raises(ValueError, match=r"unknown argument\(s\) seq_lenn; it accepts: .*seq_len"):
        build_task("selective_copy", seed=0, cache_dir=str(tmp_path), seq_lenn=3)
    dm = build_task("selective_copy", seed=3, cache_dir=str(tmp_path), seq_len=16)
    assert (dm.seed, dm.max_len, dm.cache_dir) == (3, 16 + 8, str(tmp_path))


@pytest.mark.usefixtures("scratch_registries")
def test_register_task_rejects_bad_declarations() -> None:
    with pytest.raises(ValueError, match="task_type must be one of"):
        register_task("_bad", task_type="regression", causal=True)
    with pytest.raises(ValueError, match="causal must be True or False"):
        register_task("_bad", task_type="lm", causal="yes")
    with pytest.raises(TypeError, match="needs a TaskDataModule subclass"):
        register_task("_bad", task_type="lm", causal=True)(dict)

    class Other(TaskDataModule):
        """Another task under a taken name."""

    with pytest.raises(ValueError, match=r"already registered to .*MQARDataModule"):
        register_task("mqar", task_type="lm", causal=True)(Other)


@pytest.mark.usefixtures("scratch_registries")
def test_check_ready_names_what_setup_left_unset() -> None:
    @register_task("_half_done", task_type="classification", causal=False)
    class HalfDone(TaskDataModule):
        """Sets its vocabulary, forgets the rest."""

        def __init__(self, *, seed: int = 0, cache_dir: str | None = None) -> None:
            super().__init__()
            self.vocab_size = 10

    dm = build_task("_half_done", seed=0, cache_dir=None)
    with pytest.raises(TypeError, match="_half_done") as info:
        dm.check_ready()
    for attribute in ("max_len", "num_classes", "val_set_names", "fingerprint"):
        assert attribute in str(info.value)
    assert "vocab_size" not in str(info.value)
    dm.max_len, dm.num_classes, dm.val_set_names, dm.fingerprint = 4, 2, ["val"], {}
    dm.check_ready()


def _install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: str) -> None:
    dist_info = tmp_path / "test_task_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: test-task-plugin\nVersion: 0.1\n"
    )
    (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(TASKS, "plugins_loaded", False)


@pytest.mark.usefixtures("scratch_registries")
def test_entry_point_plugins_register(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "_test_task_plugin.py").write_text(ECHO_TASK)
    _install_plugin(tmp_path, monkeypatch, "echo = _test_task_plugin")
    try:
        assert "echo" in available_tasks()
        assert describe_task("echo") == "Echo - predict the token just read."
        dm = build_task("echo", seed=0, cache_dir=str(tmp_path / "cache"))
        dm.setup("fit")
        dm.check_ready()
        batch = next(iter(dm.train_dataloader()))
        assert batch["input"].shape == (8, 8) and (batch["input"] == batch["target"]).all()
    finally:
        sys.modules.pop("_test_task_plugin", None)


@pytest.mark.usefixtures("scratch_registries")
def test_broken_plugin_is_named_and_not_skipped_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_plugin(tmp_path, monkeypatch, "_test_broken = _no_such_task_module")
    for _ in range(2):  # raised again on the next call, not silently skipped
        with pytest.raises(ImportError, match=r"'_test_broken'.*uninstall"):
            available_tasks()


@pytest.mark.slow
def test_a_new_task_is_one_file_and_one_conf(project_copy, tmp_path: Path) -> None:
    """The extension point's promise: drop in a task file and its conf, and it trains and is
    listed; nothing else in the tree changes."""
    project_copy.write("lightning_modules/tasks/echo.py", textwrap.dedent(ECHO_TASK))
    project_copy.write("conf/task/echo.yaml", ECHO_CONF)
    run_dir = tmp_path / "run"
    trained = project_copy.run(
        "-m",
        "mixerlab.experiments.cli.train",
        "task=echo",
        "experiment=smoke",
        "debug=default",
        "logger=none",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "finished" and results["task"] == "echo"
    assert (results["config"]["task"]["type"], results["config"]["task"]["causal"]) == ("lm", True)
    listed = project_copy.run("-m", "mixerlab.experiments.cli", "list")
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert "Echo - predict the token just read." in listed.stdout
