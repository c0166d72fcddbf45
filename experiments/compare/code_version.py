"""Which source a stored result was made with: sha256 of every file of a task's generator or a
mixer's code, read from the package's files without importing them (``mixerlab compare`` loads
no torch), so a stored reference can tell when the code behind it changed.

A task's code is the module that registers it (``@register_task("mad_recall", ...)``) and every
module of ``lightning_modules/tasks/`` it imports, directly or not (the shared generator and data
machinery behind ``_``). A mixer's code is the module of every registered mixer its config names
(``mixer.name``, a hybrid's pattern entries), the model every mixer runs in
(``mixers/model/sequence_model.py``), each with every module of ``mixers/`` it imports, and the
preset file its config came from (``conf/mixer/<label or name>.yaml``). Imports are followed
within the code's own folder only (``lightning_modules/tasks/``, ``mixers/``): the generators'
shared machinery and a mixer's kernels count; the training loop, which every row runs alike, does
not, nor does an unrelated mixer's module.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import mixerlab

ROOT = Path(mixerlab.__file__).resolve().parent  # the package's folder: mixers/, conf/, ...
TASKS = ("lightning_modules", "tasks")
MIXERS = ("mixers",)
MODEL = ("mixers", "model", "sequence_model.py")  # what every mixer runs in


def _module_file(dotted: str) -> Path | None:
    """The file of a ``mixerlab.*`` module (a module or a package's ``__init__.py``)."""
    parts = dotted.split(".")[1:]
    if not parts:
        return None
    for path in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py")):
        if path.is_file():
            return path
    return None


def _imported(path: Path, within: tuple[str, ...]) -> list[Path]:
    """The files of the modules ``path`` imports below ``mixerlab.<within>``: ``from a.b import
    c`` names ``a.b`` and, where ``c`` is a module of it, ``a.b.c``."""
    prefix = ".".join(("mixerlab", *within))
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    inside = (n for n in names if n == prefix or n.startswith(prefix + "."))
    return [file for name in inside if (file := _module_file(name)) is not None]


def _closure(roots: Iterable[Path], within: tuple[str, ...]) -> list[Path]:
    """``roots`` and every file they import below ``mixerlab.<within>``, directly or not."""
    seen: set[Path] = set()
    todo = list(roots)
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += _imported(path, within)
    return sorted(seen)


def _decorator_name(call: ast.expr, module: ast.Module, decorator: str) -> str | None:
    """The name a ``@decorator("name")`` registers: a string, or a module constant holding one."""
    if not isinstance(call, ast.Call) or not call.args:
        return None
    func = call.func
    called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    if called != decorator:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    for node in module.body:  # NAME = "hybrid" ... @register_mixer(NAME)
        if isinstance(node, ast.Assign) and isinstance(arg, ast.Name):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
            if arg.id in targets and isinstance(node.value, ast.Constant):
                return str(node.value.value)
    return None


@functools.cache
def registered(within: tuple[str, ...], decorator: str) -> Mapping[str, Path]:
    """Name -> module file of every class a module of ``mixerlab.<within>`` registers with
    ``@decorator(name)``, read from the source."""
    found = {}
    for path in sorted(ROOT.joinpath(*within).glob("*.py")):
        module = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(module):
            if isinstance(node, ast.ClassDef):
                for call in node.decorator_list:
                    if (name := _decorator_name(call, module, decorator)) is not None:
                        found[name] = path
    return found


def _hashes(paths: Iterable[Path]) -> dict[str, str]:
    """sha256 of each file, by its path inside the package (``mixers/ssm.py``)."""
    return {
        path.relative_to(ROOT).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(paths)
    }


def task_code(task: str) -> dict[str, str]:
    """The hashes of ``task``'s generator code; empty when no built-in task registers it."""
    module = registered(TASKS, "register_task").get(task)
    return _hashes(_closure([module], TASKS)) if module else {}


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def mixer_names(mixer: Mapping[str, Any]) -> list[str]:
    """The registered mixers a mixer config names: ``name``, and a hybrid's pattern entries."""
    known = registered(MIXERS, "register_mixer")
    return sorted({text for text in _strings(dict(mixer)) if text in known})


def mixer_code(mixer: Mapping[str, Any]) -> dict[str, str]:
    """The hashes of the code a mixer config runs: its mixers' modules and the model, with what
    they import from ``mixers/``, and its preset file. Without a built-in mixer among its names
    (a plugin), empty."""
    known = registered(MIXERS, "register_mixer")
    modules = [known[name] for name in mixer_names(mixer)]
    if not modules:
        return {}
    preset = ROOT / "conf" / "mixer" / f"{mixer.get('label') or mixer.get('name')}.yaml"
    files = _closure([*modules, ROOT.joinpath(*MODEL)], MIXERS)
    return _hashes([*files, *([preset] if preset.is_file() else [])])


def changed_files(stored: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """The files whose hash differs between ``stored`` and ``current``, added and removed ones
    included, each with what happened to it."""
    changes = []
    for path in sorted({*stored, *current}):
        if path not in current:
            changes.append(f"{path} removed")
        elif path not in stored:
            changes.append(f"{path} added")
        elif stored[path] != current[path]:
            changes.append(f"{path} changed")
    return changes
