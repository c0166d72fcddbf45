"""Task defaults are defined once: ``build_task(name)`` from Python builds the data that
``mixerlab train task=<name>`` builds, for every registered task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from configs import conf_options, run_config

from mixerlab.lightning_modules.tasks import available_tasks, build_task


def _state(dm: Any) -> dict[str, Any]:
    """Everything a fresh data module holds: what its data follow from (arguments, parts,
    fingerprints, ...). Equal states build equal data."""
    return vars(dm)


def test_every_registered_task_has_a_config() -> None:
    assert set(available_tasks()) <= set(conf_options("task"))


@pytest.mark.parametrize("name", available_tasks())
def test_python_and_the_command_line_build_the_same_data(name: str, tmp_path: Path) -> None:
    config = run_config(f"task={name}")
    from_cli = build_task(name, seed=0, cache_dir=str(tmp_path), **config["task"]["datamodule"])
    from_python = build_task(name, seed=0, cache_dir=str(tmp_path))
    assert _state(from_python) == _state(from_cli)
