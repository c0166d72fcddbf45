"""Every command in the README's code blocks is run or checked here, and a command no test here
can check fails: the README's commands are what a newcomer types first, so none may rot.

- ``make`` lines are dry-run (``make -n``): each runs the program the README says it does.
- ``mixerlab train`` lines are composed and validated as ``mixerlab train`` does before a run:
  a multirun once per value of each swept key (the sweep preset's grid and the command line's
  lists), every other key at its first value.
- A sweep followed by a ``mixerlab compare`` line runs for real on a tiny budget (slow), the
  sweep preset's grid cut to its first values, and the compare line then runs on the folder the
  sweep printed.
- The plugin walk-through (``mixerlab new-mixer`` ... a sweep with the built-ins) runs line by
  line from the scaffold to the sweep (slow).

The training lines of docs/ compose the same way, those with a ``<placeholder>`` aside.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from configs import compose_config, conf_options, run_config
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType

from mixerlab.experiments.cli import main as mixerlab

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MIXERLAB = str(Path(sys.executable).parent / "mixerlab")  # the installed console script
MULTIRUN = ("-m", "--multirun")
# What each README command is checked by, by its leading words.
CHECKED_BY = {
    ("make",): "test_make_lines_run_what_they_say",
    ("mixerlab", "train"): "test_training_lines_compose (the sweeps before a compare line run)",
    ("mixerlab", "compare"): "test_a_sweep_then_its_comparison",
    ("mixerlab", "list"): "test_the_mixer_table_and_mixerlab_list_agree",
    ("mixerlab", "study"): "test_a_sweep_then_its_comparison (a study's status after its sweep)",
    ("mixerlab", "new-mixer"): "test_the_plugin_walkthrough",
    ("cd",): "test_the_plugin_walkthrough",
    ("pip", "install"): "test_the_plugin_walkthrough",
    ("pytest",): "test_the_plugin_walkthrough",
}
# What each make target runs, as `make -n` prints it.
MAKE_RUNS = {
    "train": ("/mixerlab train",),
    "test": ("-m pytest",),
    "test-fast": ("-m pytest", '-m "not slow"'),
    "lint": ("ruff check", "ruff format --check"),
    "bench": ("/mixerlab bench",),
}
# A run the size of a unit test, appended to every README training command run for real.
TINY_RUN = ("debug=default", "model.d_model=16", "model.n_layers=1", "callbacks.progress_bar=false")


def shell_blocks(page: Path = README) -> list[list[list[str]]]:
    """Each ``bash`` block of a page as its commands, each command as argv: comments dropped,
    ``a && b`` two commands, ``.venv/bin/mixerlab`` the same as ``mixerlab``."""
    blocks = []
    for text in re.findall(r"```bash\n(.*?)```", page.read_text(), re.DOTALL):
        commands = []
        for line in text.splitlines():
            words = [w.removeprefix(".venv/bin/") for w in shlex.split(line, comments=True)]
            while "&&" in words:
                commands.append(words[: words.index("&&")])
                words = words[words.index("&&") + 1 :]
            if words:
                commands.append(words)
        blocks.append(commands)
    return blocks


def readme_commands(*leading: str) -> list[list[str]]:
    """Every README command, or those that start with these words."""
    return [
        command
        for block in shell_blocks()
        for command in block
        if tuple(command[: len(leading)]) == leading
    ]


def sweep_then_compare() -> list[tuple[list[str], list[str]]]:
    """(a multirun, the compare line after it in the same block, on the folder it prints)."""
    pairs = []
    for block in shell_blocks():
        sweeps = [c for c in block if c[:2] == ["mixerlab", "train"] and set(c) & set(MULTIRUN)]
        compares = [c for c in block if c[:2] == ["mixerlab", "compare"]]
        pairs += list(zip(sweeps, compares, strict=False))
    return pairs


def study_lines(sweep: list[str]) -> list[list[str]]:
    """The ``mixerlab study`` lines of the README block that holds this sweep."""
    (block,) = [b for b in shell_blocks() if sweep in b]
    return [c for c in block if c[:2] == ["mixerlab", "study"]]


def plugin_block() -> list[list[str]]:
    """The README block that scaffolds a plugin and sweeps it with the built-ins."""
    (block,) = [b for b in shell_blocks() if any(c[:2] == ["mixerlab", "new-mixer"] for c in b)]
    return block


def training_overrides(command: list[str]) -> tuple[list[str], bool]:
    """A ``mixerlab train`` line's overrides, Hydra's flags dropped (``--cfg job`` composes
    what a run would), and whether it is a multirun."""
    words, overrides, multirun = iter(command[2:]), [], False
    for word in words:
        if word in MULTIRUN:
            multirun = True
        elif word in ("--cfg", "-c", "--package", "-p"):
            next(words)  # the flag's value
        elif not word.startswith("-"):
            overrides.append(word)
    return overrides, multirun


def swept_values(overrides: list[str]) -> dict[str, list[str]]:
    """``{key: [key=value, ...]}``: what a multirun gives each key, in Hydra's override grammar
    (lists, ``choice(...)``, ``glob(...)`` over a group's options). An interval (Optuna's search
    space) has no values to enumerate: such a key keeps its config value."""
    values = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if not override.is_sweep_override():
            options = [override.get_value_element_as_str()]
        elif override.value_type is ValueType.GLOB_CHOICE_SWEEP:
            options = override.value().filter(conf_options(override.key_or_group))
        elif override.is_discrete_sweep():
            options = list(override.sweep_string_iterator())
        else:
            continue
        values[override.key_or_group] = [f"{key}={option}" for option in options]
    return values


def sweep_grid(overrides: list[str]) -> tuple[dict[str, list[str]], set[str]]:
    """A multirun's grid: the sweep preset's ``hydra.sweeper.params`` with the command line's
    keys winning, as Hydra's sweeper merges them, and which keys come from the preset."""
    given = swept_values(overrides)
    first = [options[0] for options in given.values()]
    params = compose_config(*first, hydra=True).hydra.sweeper.get("params") or {}
    preset = swept_values([f"{key}={value}" for key, value in params.items()])
    return {**preset, **given}, set(preset) - set(given)


def jobs_covering(grid: dict[str, list[str]]) -> list[list[str]]:
    """Jobs that give every value of every key once, every other key at its first value."""
    first = [options[0] for options in grid.values()]
    jobs = [first]
    for i, options in enumerate(grid.values()):
        jobs += [[*first[:i], option, *first[i + 1 :]] for option in options[1:]]
    return jobs


def training_jobs(command: list[str], *, whole_preset: bool) -> list[list[str]]:
    """The jobs that compose every value a ``mixerlab train`` line gives: the line as written,
    or a multirun's every swept value once (``whole_preset=False``: the sweep preset's grid at
    its first values, the command line's own lists whole)."""
    overrides, multirun = training_overrides(command)
    if not multirun:
        return [overrides]
    grid, from_preset = sweep_grid(overrides)
    if not whole_preset:
        grid = {key: values[:1] if key in from_preset else values for key, values in grid.items()}
    return jobs_covering(grid)


def run_command(
    argv: list[str], cwd: Path, env: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    """A README command through the installed console script, ``extra`` arguments appended."""
    program = [sys.executable, MIXERLAB] if argv[0] == "mixerlab" else []
    return subprocess.run(
        [*program, *(argv[1:] if program else argv), *extra],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def tiny_run_env(tmp_path: Path) -> dict[str, str]:
    """One torch thread, W&B off and a scratch datasets cache."""
    scratch = {"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return {**os.environ, **scratch, "MIXERLAB_CACHE": str(tmp_path / "cache")}


@pytest.fixture
def readme_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scratch_registries: None
) -> Iterator[Path]:
    """The plugin the README scaffolds, written by its own ``mixerlab new-mixer`` line and
    imported as its entry point imports it once installed; the registries are restored after."""
    scaffold = readme_commands("mixerlab", "new-mixer")[0]
    monkeypatch.chdir(tmp_path)
    assert mixerlab(scaffold[1:]) == 0
    (folder,) = tmp_path.iterdir()
    entry_point = r'\[project\.entry-points\."mixerlab\.mixers"\]\n\w+ = "([\w.]+)"'
    module = re.search(entry_point, (folder / "pyproject.toml").read_text())[1]
    monkeypatch.syspath_prepend(str(folder))
    importlib.import_module(module)
    yield folder
    for name in [m for m in sys.modules if m.split(".")[0] == module.split(".")[0]]:
        del sys.modules[name]


def test_every_readme_command_is_checked() -> None:
    commands = readme_commands()
    assert len(commands) >= 10
    unchecked = [
        shlex.join(c) for c in commands if not any(tuple(c[: len(k)]) == k for k in CHECKED_BY)
    ]
    assert not unchecked, f"README commands no test runs or checks: {unchecked}"
    compared = [shlex.join(compare) for _, compare in sweep_then_compare()]
    alone = [shlex.join(c) for c in readme_commands("mixerlab", "compare")]
    assert sorted(compared) == sorted(alone), "a compare line needs its sweep in the same block"


@pytest.mark.parametrize("command", readme_commands("make"), ids=shlex.join)
def test_make_lines_run_what_they_say(command: list[str]) -> None:
    target, *variables = command[1:]
    dry_run = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, *variables],
        capture_output=True,
        text=True,
        check=False,
    )
    assert dry_run.returncode == 0, dry_run.stderr
    for program in MAKE_RUNS[target]:
        assert program in dry_run.stdout
    for variable in variables:  # ARGS=<a test path>: it exists and reaches pytest
        name, _, value = variable.partition("=")
        assert name == "ARGS" and (ROOT / value).exists() and value in dry_run.stdout
    if target == "test":  # CI runs the README's test command
        assert "make test" in (ROOT / ".ci" / "run").read_text()
    if target == "train":  # the main job composes and passes the schema
        run_config()


def docs_training_lines() -> list[list[str]]:
    """The ``mixerlab train`` lines in docs/ with nothing left for the reader to fill in."""
    return [
        command
        for page in DOCS
        for block in shell_blocks(page)
        for command in block
        if command[:2] == ["mixerlab", "train"] and "<" not in shlex.join(command)
    ]


@pytest.mark.parametrize("command", readme_commands("mixerlab", "train"), ids=shlex.join)
@pytest.mark.usefixtures("readme_plugin")
def test_training_lines_compose(command: list[str]) -> None:
    for job in training_jobs(command, whole_preset=True):
        run_config(*job)


@pytest.mark.parametrize("command", docs_training_lines(), ids=shlex.join)
def test_docs_training_lines_compose(command: list[str]) -> None:
    """As the README's, but a sweep preset's grid only at its first values: the README's
    ``sweep=mixers`` line composes all of it."""
    for job in training_jobs(command, whole_preset=False):
        run_config(*job)


def test_the_mixer_table_and_mixerlab_list_agree(capsys: pytest.CaptureFixture) -> None:
    """The README's table of families names every ``mixer=`` option once, and the README's
    ``mixerlab list`` lists every one of them."""
    table = re.search(r"\| family \| `mixer=` options \|\n(.*?)\n\n", README.read_text(), re.S)
    assert table, "the README's table of mixer families is missing"
    named = re.findall(r"`(\w+)`", "\n".join(r.split("|")[2] for r in table[1].splitlines()[1:]))
    assert sorted(named) == conf_options("mixer")
    (command,) = readme_commands("mixerlab", "list")
    assert mixerlab(command[1:]) == 0
    listed = capsys.readouterr().out
    missing = [name for name in named if name != "plugin" and f"\n  {name} " not in listed]
    assert not missing, listed


@pytest.mark.slow
@pytest.mark.parametrize(("sweep", "compare"), sweep_then_compare(), ids=shlex.join)
def test_a_sweep_then_its_comparison(sweep: list[str], compare: list[str], tmp_path: Path) -> None:
    env = tiny_run_env(tmp_path)
    grid, from_preset = sweep_grid(training_overrides(sweep)[0])
    narrowed = [grid[key][0] for key in sorted(from_preset)]  # the preset's grid: first values
    swept = run_command(sweep, tmp_path, env, *narrowed, *TINY_RUN)
    assert swept.returncode == 0, swept.stderr[-3000:]
    # a sweep names its folder; a study (study=<name>) its runs/ inside studies/<name>
    folder = re.search(r"sweep of \d+ job\(s\) in (\S+)", swept.stdout) or re.search(
        r"study \S+: \d+ job\(s\) in (\S+)/runs\n", swept.stdout
    )
    assert folder, swept.stdout
    sweep_dir = Path(folder[1]).resolve().relative_to(tmp_path.resolve())

    placeholders = [word for word in compare if "<" in word]  # e.g. runs/multirun/<...>_mqar
    for placeholder in placeholders:
        pattern = ".+".join(map(re.escape, re.split(r"<[^>]*>", placeholder)))
        assert re.fullmatch(pattern, str(sweep_dir)), (placeholder, sweep_dir)
    if not placeholders:  # a study's folder is known before it runs
        assert str(sweep_dir) in compare, (compare, sweep_dir)
    command = [str(sweep_dir) if word in placeholders else word for word in compare]
    compared = run_command(command, tmp_path, env)
    assert compared.returncode == 0, compared.stderr[-3000:]
    assert (tmp_path / sweep_dir / "comparison" / "comparison.md").is_file()
    for status in study_lines(sweep):  # `mixerlab study status <name>` in the same block
        shown = run_command(status, tmp_path, env)
        assert shown.returncode == 0, shown.stderr[-3000:]
        assert "finished" in shown.stdout and "core-hours" in shown.stdout, shown.stdout


@pytest.mark.slow
def test_the_plugin_walkthrough(tmp_path: Path) -> None:
    """Scaffold, install, its own test, a run and a sweep with the built-ins, line by line."""
    site = tmp_path / "site"
    env = {**tiny_run_env(tmp_path), "PYTHONPATH": str(site)}
    cwd = tmp_path
    for command in plugin_block():
        line = shlex.join(command)
        match command:
            case ["mixerlab", "new-mixer", *_]:
                done = run_command(command, cwd, env)
            case ["cd", folder]:
                cwd = cwd / folder
                continue
            case ["pip", "install", "-e", spec]:
                # --target: the same package into a folder the test throws away, where an
                # editable install would change this environment for good
                pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
                pip += ["--no-index", "--no-build-isolation", "--target", str(site), spec]
                done = subprocess.run(pip, cwd=cwd, capture_output=True, text=True, check=False)
            case ["pytest", *arguments]:
                pytest_ = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *arguments]
                done = subprocess.run(pytest_, cwd=cwd, env=env, capture_output=True, text=True)
                assert " passed" in done.stdout, done.stdout[-3000:]
            case ["mixerlab", "train", *_]:
                done = run_command(command, cwd, env, *TINY_RUN)
                assert "finished" in done.stderr + done.stdout, done.stderr[-3000:]
            case _:
                pytest.fail(f"the plugin walk-through has a line no test runs: {line}")
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
