"""``mixerlab new-mixer``: the package it writes installs, registers through its entry point and
passes the contract; a bad name or an existing folder is one clear error and exit 2."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mixerlab.experiments.cli import main as mixerlab
from mixerlab.experiments.cli.new_mixer import class_name_for
from mixerlab.mixers import available_mixers, get_mixer_class
from mixerlab.mixers._contract import ENTRY_POINT_GROUP
from mixerlab.mixers.testing import CHECKS, check_mixer

NAME = "probe_mixer"
BIN = Path(sys.executable).parent
GENERATED = {
    "pyproject.toml",
    "README.md",
    f"mixerlab_{NAME}/__init__.py",
    f"mixerlab_{NAME}/{NAME}.py",
    f"tests/test_{NAME}.py",
}


def _generate(tmp_path: Path) -> Path:
    folder = tmp_path / "plugin"
    assert mixerlab(["new-mixer", NAME, "--dir", str(folder)]) == 0
    return folder


def test_writes_a_plugin_package(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = _generate(tmp_path)
    assert {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} == GENERATED
    pyproject = (folder / "pyproject.toml").read_text()
    assert f'[project.entry-points."{ENTRY_POINT_GROUP}"]\n{NAME} = "mixerlab_{NAME}.{NAME}"' in (
        pyproject
    )
    assert 'dependencies = ["mixerlab"]' in pyproject
    readme = (folder / "README.md").read_text()
    for command in (
        'pip install -e ".[test]"',
        f"mixerlab train mixer=plugin mixer.name={NAME}\n",
        f"mixerlab train -m mixer=plugin mixer.name=attention,conv,{NAME}",
    ):
        assert command in readme
    assert f"sweep: mixerlab train -m mixer=plugin mixer.name=attention,conv,{NAME}" in (
        capsys.readouterr().out
    )
    lint = subprocess.run(  # from the package's folder: mixerlab is a third-party import there
        [BIN / "ruff", "check", "--isolated", "."], cwd=folder, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout


@pytest.mark.usefixtures("scratch_registries")
def test_the_generated_mixer_passes_the_contract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(_generate(tmp_path)))
    module = f"mixerlab_{NAME}.{NAME}"
    try:
        importlib.import_module(module)  # what the entry point does once installed
        report = check_mixer(NAME)
    finally:
        sys.modules.pop(module, None)
        sys.modules.pop(f"mixerlab_{NAME}", None)
    applicable = sum(
        check.applies(get_mixer_class(NAME), mode)
        for mode in (True, False)
        for check in CHECKS.values()
    )
    assert (report.count("passed"), report.count("failed")) == (applicable, 0)
    ran = {(o.mode, o.check) for o in report.outcomes if o.outcome == "passed"}
    assert {("causal", "step"), ("encoder", "sees_future"), ("encoder", "encoder_step")} <= ran


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("9lives", r"mixer name '9lives' must start with a letter"),
        ("my-mixer", r"must start with a letter and hold only letters, digits and underscores"),
        ("conv", r"a mixer named 'conv' is already registered \(by mixerlab.mixers.conv\)"),
    ],
)
def test_a_bad_name_is_a_clear_error(
    name: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert mixerlab(["new-mixer", name, "--dir", str(tmp_path / "plugin")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixerlab new-mixer: error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "plugin").exists()


def test_an_existing_folder_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / f"mixerlab-{NAME}").mkdir()  # the default folder, in the current one
    assert mixerlab(["new-mixer", NAME]) == 2
    assert f"mixerlab-{NAME} already exists; pass another --dir" in capsys.readouterr().err
    assert not any((tmp_path / f"mixerlab-{NAME}").iterdir())


def test_class_names() -> None:
    assert class_name_for("hyena") == "HyenaMixer"
    assert class_name_for("my_mixer") == "MyMixer"
    assert class_name_for("s4d_v2") == "S4dV2Mixer"


@pytest.mark.slow
def test_installed_plugin_is_found_listed_and_passes_its_own_test(tmp_path: Path) -> None:
    """Installed (into a folder on PYTHONPATH, not into this venv: no trace is left), the
    entry point registers the mixer and the generated test passes."""
    folder, site = _generate(tmp_path), tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    install += ["--no-build-isolation", "--target", str(site), str(folder)]
    installed = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    found = run(
        "-c",
        "from importlib.metadata import entry_points; from mixerlab import available_mixers; "
        f"print(entry_points(group={ENTRY_POINT_GROUP!r})[{NAME!r}].value, "
        f"{NAME!r} in available_mixers())",
    )
    assert found.stdout.split() == [f"mixerlab_{NAME}.{NAME}", "True"], found.stderr[-3000:]
    listed = run("-m", "mixerlab.experiments.cli", "list")
    assert re.search(rf"^\s+{NAME}\s+Gated running mean", listed.stdout, re.MULTILINE), listed
    tested = run("-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests")
    assert tested.returncode == 0, tested.stdout[-3000:]
    assert "2 passed" in tested.stdout
    assert re.search(rf"contract of {NAME}: \d+ passed, 0 failed, \d+ skipped", tested.stdout)
    assert NAME not in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP).names
    assert NAME not in available_mixers()
