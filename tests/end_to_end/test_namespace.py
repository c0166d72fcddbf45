"""One installed name, ``mixerlab``: what ``pip install`` adds, that every module is loaded under
that one name (two names would make two registries), that ``import mixerlab`` stays light, and
that run folders written before the move still compare byte for byte and resume."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_runs"
LEGACY_NAMES = ("mixers", "lightning_modules", "experiments", "conf")
PUBLIC_API = (
    "TokenMixer",
    "register_mixer",
    "build_mixer",
    "available_mixers",
    "check_mixer",
    "SequenceModel",
    "register_task",
    "register_plot",
)


def python(code: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


def test_the_installed_distribution_adds_only_mixerlab() -> None:
    distributions = metadata.packages_distributions()
    tops = {name for name, dists in distributions.items() if "mixerlab" in dists}
    assert tops == {"mixerlab"}


def _source_files() -> set[str]:
    """Every module and config of the package, as paths inside it."""
    return {
        path.relative_to(ROOT).as_posix()
        for folder in LEGACY_NAMES
        for path in (ROOT / folder).rglob("*")
        if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts
    }


def test_pyproject_lists_every_subpackage() -> None:
    """The package list is written out (a search from the root would find the folders under
    their own names): a new folder with an ``__init__.py`` must be added to it."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    folders = {
        "mixerlab." + ".".join(init.parent.relative_to(ROOT).parts)
        for folder in LEGACY_NAMES
        for init in (ROOT / folder).rglob("__init__.py")
    }
    missing = folders - listed
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"
    assert listed - folders == {"mixerlab"}


@pytest.mark.slow
def test_the_wheel_holds_the_mixerlab_package_and_nothing_beside_it(tmp_path: Path) -> None:
    source = tmp_path / "source"  # setuptools builds inside the tree: build from a copy
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in LEGACY_NAMES:
        shutil.copytree(ROOT / folder, source / folder, ignore=skip)
    for name in ("pyproject.toml", "__init__.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    built = subprocess.run(
        [*pip_wheel, "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("mixerlab-*.whl")
    names = [name for name in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in name]
    assert {name.split("/")[0] for name in names} == {"mixerlab"}
    # the root's only module is the package itself: no build script or tool file beside it
    assert [name for name in names if name.count("/") == 1] == ["mixerlab/__init__.py"]
    assert {name.removeprefix("mixerlab/") for name in names} - {"__init__.py"} == _source_files()


def test_every_module_loads_under_one_name_from_the_repository_root() -> None:
    # The repository root is on sys.path here (``-c`` puts the working directory first), so a
    # module that imported ``mixers`` instead of ``mixerlab.mixers`` would load a second copy.
    code = (
        "import importlib, pkgutil, sys\n"
        "import mixerlab\n"
        "skip = ('mixerlab.experiments.benchmarks.gpu_check',)\n"
        "for info in pkgutil.walk_packages(mixerlab.__path__, 'mixerlab.'):\n"
        "    if info.name.split('.')[1] in ('mixers', 'lightning_modules', 'experiments', 'conf')"
        " and info.name not in skip:\n"
        "        importlib.import_module(info.name)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({LEGACY_NAMES!r})))\n"
    )
    done = python(code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"


def test_importing_mixerlab_loads_no_training_stack_and_offers_the_public_api() -> None:
    code = (
        "import sys, mixerlab\n"
        "heavy = ('torch', 'pytorch_lightning', 'lightning_fabric', 'hydra', 'wandb')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
        "from mixerlab import TokenMixer, register_mixer, build_mixer, available_mixers\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
        f"print(all(hasattr(mixerlab, name) for name in {PUBLIC_API!r}))\n"
        "print(sorted(set(mixerlab.__all__)))\n"
    )
    done = python(code, cwd=Path("/"))
    assert done.returncode == 0, done.stderr[-3000:]
    before, with_mixers, offered, listed = done.stdout.splitlines()
    assert before == "[]"
    assert with_mixers == "['torch']"  # the mixers are plain PyTorch
    assert offered == "True" and listed == str(sorted(PUBLIC_API))


def test_an_unknown_public_name_is_an_attribute_error() -> None:
    import mixerlab

    with pytest.raises(AttributeError, match="no attribute 'build_mixr'"):
        mixerlab.build_mixr  # noqa: B018


# ---------------------------------------------------- run folders written before the move
def _normalised(data: bytes, root: Path) -> bytes:
    return data.replace(str(root).encode(), b"{ROOT}")


def test_a_sweep_written_before_the_move_compares_byte_for_byte(tmp_path: Path) -> None:
    """The fixture is a real 4-run sweep and its comparison, both made by mixerlab before its
    modules moved under ``mixerlab.`` (their records name ``lightning_modules.modules...``)."""
    shutil.copytree(FIXTURES / "sweep", tmp_path / "sweep")
    golden = FIXTURES / "sweep_compare"
    env = {**os.environ, "COLUMNS": "120"}
    command = ["compare", "sweep", "--metric", "val/loss", "--also", "val/acc,val/bpb"]
    done = subprocess.run(
        [sys.executable, "-m", "mixerlab.experiments.cli", *command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "sweep" / "comparison"
    assert _normalised(done.stdout + done.stderr, tmp_path) == (golden / "stdout.txt").read_bytes()
    for name in ("comparison.csv", "comparison.md"):
        assert _normalised((out / name).read_bytes(), tmp_path) == (golden / name).read_bytes()
    binary = json.loads((golden / "binary_sha256.json").read_text())
    import matplotlib

    if matplotlib.__version__ != binary["matplotlib"]:
        pytest.skip(f"the PNG hashes were taken with matplotlib {binary['matplotlib']}")
    for name, digest in binary["sha256"].items():
        data = _normalised((out / name).read_bytes(), tmp_path)
        assert hashlib.sha256(data).hexdigest() == digest, name


@pytest.mark.slow
def test_a_run_written_before_the_move_resumes_and_is_then_skipped(tmp_path: Path) -> None:
    """A 6-step run made before the move, trained on to 9 steps from its checkpoint: the old
    code ended that resumed run at val/loss 5.175394535064697 (same machine, 2 threads); a
    re-run of the finished run is then skipped, not refused as another config."""
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURES / "short_run", run_dir)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file(), "the fixture's checkpoint is missing (is it ignored by git?)"
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "MIXERLAB_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "2",
    }

    def train(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mixerlab.experiments.cli", "train", *argv],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    resumed = train(f"resume={run_dir}", "trainer.max_steps=9")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {checkpoint}" in resumed.stdout + resumed.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "finished" and results["last_step"] == 9
    assert results["best"]["val/loss"] == pytest.approx(5.175394535064697, rel=1e-4)
    again = train(f"resume={run_dir}", "trainer.max_steps=9")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already finished" in again.stdout + again.stderr
