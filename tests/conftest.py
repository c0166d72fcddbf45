"""Shared fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = ("mixers", "lightning_modules", "experiments", "conf")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Run every test on one intra-op thread: the tiny tensors of unit tests gain nothing from
    more, and on a busy machine thread oversubscription makes them up to ~10x slower. Training
    runs the tests start as subprocesses keep their own thread settings."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class ProjectCopy:
    """A copy of the ``mixerlab`` package (``root/mixerlab``) in which a test may add files (a
    throwaway mixer, task or plot) and run Python: ``PYTHONPATH`` puts the copy in front of the
    installed package, so the real tree is never touched."""

    root: Path

    def write(self, relative_path: str, text: str) -> Path:
        """Write a file at a path relative to the package, e.g. ``mixers/echo.py``."""
        path = self.root / "mixerlab" / relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``python *args`` in the copy, on one torch thread, W&B off."""
        env = {
            **os.environ,
            "PYTHONPATH": str(self.root),
            "WANDB_MODE": "disabled",
            "OMP_NUM_THREADS": "1",
        }
        return subprocess.run(
            [sys.executable, *args],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture
def project_copy(tmp_path: Path) -> ProjectCopy:
    root = tmp_path / "project"
    skip = shutil.ignore_patterns("__pycache__")
    for folder in SOURCE_FOLDERS:
        shutil.copytree(ROOT / folder, root / "mixerlab" / folder, ignore=skip)
    shutil.copy(ROOT / "__init__.py", root / "mixerlab" / "__init__.py")
    return ProjectCopy(root)


@pytest.fixture
def scratch_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test may register mixers and tasks, or load test plugins: both registries are restored
    afterwards, so nothing it adds reaches the other tests."""
    from mixerlab.lightning_modules.tasks._base import TASKS
    from mixerlab.mixers._contract import MIXERS

    for registry in (MIXERS, TASKS):
        monkeypatch.setattr(registry, "classes", dict(registry.classes))
        monkeypatch.setattr(registry, "plugins_loaded", registry.plugins_loaded)


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tiny runs trained for real (attention and the LSTM on the quick task, a few steps),
    checkpoints kept: what ``mixerlab maps`` and ``compare --maps`` read."""
    from mixerlab.experiments.cli.train import main as train

    root = tmp_path_factory.mktemp("trained")
    sweep = ["-m", "experiment=quick", "mixer=attention,rnn", "debug=default", "seed=0"]
    sweep += ["model.d_model=16", "logger=none", "callbacks.progress_bar=false", "study=tiny"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MIXERLAB_CACHE", str(root / "cache"))
        assert train(sweep) == 0
    return sorted(p for p in (root / "studies" / "tiny" / "runs").iterdir() if p.is_dir())
