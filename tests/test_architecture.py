"""The layout the README draws: imports go one way (experiments -> lightning_modules -> mixers),
no module-level import cycles, mixers free of Lightning/Hydra/W&B, and no source file past ~400
lines. Read from the source with ``ast``, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mixerlab"
LAYERS = {"mixers": 0, "lightning_modules": 1, "experiments": 2}
TRAINING_STACK = ("pytorch_lightning", "lightning", "hydra", "omegaconf", "wandb")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = (PACKAGE, *path.relative_to(ROOT).with_suffix("").parts)
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path, *, top_level_only: bool) -> Iterator[str]:
    """Absolute names of what the module imports; ``from pkg import sub`` yields ``pkg.sub``
    when ``sub`` is a module of ours."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:
                    yield f"{base}.{alias.name}"


def test_the_tree_is_found() -> None:
    expected = {"mixers.base", "lightning_modules.tasks.base", "experiments.compare.cli"}
    assert {f"{PACKAGE}.{name}" for name in expected} <= set(MODULES)


def _layer(name: str) -> int:
    """The layer of a module of ours (``mixerlab.<folder>...``), -1 for anything else."""
    package, _, rest = name.partition(".")
    return LAYERS.get(rest.split(".")[0], -1) if package == PACKAGE else -1


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_one_way(name: str) -> None:
    layer = _layer(name)
    for imported in _imports(name, MODULES[name], top_level_only=False):
        assert _layer(imported) <= layer, f"{name} imports {imported} from a layer above it"
        if layer == 0:
            top = imported.split(".")[0]
            assert top not in TRAINING_STACK, f"{name} imports {imported}: mixers/ is plain PyTorch"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_name_our_modules_under_mixerlab_only(name: str) -> None:
    """``import mixers`` would load a second copy of the package beside ``mixerlab.mixers``
    (two registries) wherever the repository root is on ``sys.path``."""
    for imported in _imports(name, MODULES[name], top_level_only=False):
        assert imported.split(".")[0] not in LAYERS | {"conf": -1}, (
            f"{name} imports {imported}: write mixerlab.{imported}"
        )


def test_no_import_cycles() -> None:
    graph = {
        name: {m for m in _imports(name, path, top_level_only=True) if m in MODULES and m != name}
        for name, path in MODULES.items()
    }
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            cycle = [*trail[trail.index(node) :], node]
            # a package's __init__ importing its own submodules is how discovery works
            if not all(step.startswith(cycle[0] + ".") for step in cycle[1:-1]):
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            return
        if node in done:
            return
        for child in sorted(graph[node]):
            visit(child, [*trail, node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_source_files_stay_readable_in_one_sitting(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines; split it by responsibility"
