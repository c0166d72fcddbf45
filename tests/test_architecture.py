"""The layout docs/architecture.md draws: imports go one way (experiments -> lightning_modules ->
mixers), every module is named under ``mixerlab``, no import cycle among the imports that run when
a module loads (those under ``if TYPE_CHECKING:`` included, since a circle hidden there is still a
circle in the design), and mixers free of Lightning/Hydra/W&B. Read from the source with ``ast``,
so a lazy import inside a function counts for the direction too. File size is no rule here: a long
file is a smell to look at, and the before-stop hook lists them."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mixerlab"
LAYERS = {"mixers": 0, "lightning_modules": 1, "experiments": 2}
TRAINING_STACK = ("pytorch_lightning", "lightning", "hydra", "omegaconf", "wandb")


def _modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = (PACKAGE, *path.relative_to(ROOT).with_suffix("").parts)
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _load_time_nodes(tree: ast.Module) -> Iterator[ast.AST]:
    """Every node that runs (or, under ``TYPE_CHECKING``, is declared to run) when the module
    loads: all of it but the bodies of functions."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


def _imports(name: str, path: Path, *, load_time_only: bool) -> Iterator[str]:
    """Absolute names of what the module imports; ``from pkg import sub`` yields ``pkg.sub``
    when ``sub`` is a module of ours."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = _load_time_nodes(tree) if load_time_only else ast.walk(tree)
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
    expected = {"mixers._contract", "lightning_modules.tasks._base", "experiments.cli.compare"}
    assert {f"{PACKAGE}.{name}" for name in expected} <= set(MODULES)


def _layer(name: str) -> int:
    """The layer of a module of ours (``mixerlab.<folder>...``), -1 for anything else."""
    package, _, rest = name.partition(".")
    return LAYERS.get(rest.split(".")[0], -1) if package == PACKAGE else -1


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_one_way(name: str) -> None:
    layer = _layer(name)
    for imported in _imports(name, MODULES[name], load_time_only=False):
        assert _layer(imported) <= layer, f"{name} imports {imported} from a layer above it"
        if layer == 0:
            top = imported.split(".")[0]
            assert top not in TRAINING_STACK, f"{name} imports {imported}: mixers/ is plain PyTorch"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_name_our_modules_under_mixerlab_only(name: str) -> None:
    """``import mixers`` would load a second copy of the package beside ``mixerlab.mixers``
    (two registries) wherever the repository root is on ``sys.path``."""
    for imported in _imports(name, MODULES[name], load_time_only=False):
        assert imported.split(".")[0] not in LAYERS | {"conf": -1}, (
            f"{name} imports {imported}: write mixerlab.{imported}"
        )


def test_no_import_cycles() -> None:
    graph = {
        name: {m for m in _imports(name, path, load_time_only=True) if m in MODULES and m != name}
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
