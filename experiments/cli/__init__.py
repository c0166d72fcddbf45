"""The ``mixerlab`` command: one entry point, subcommands imported only when used.

    mixerlab train mixer=gmlp task=mqar     # a subcommand and its own arguments
    mixerlab --help                         # every subcommand with its one-line help

A command is one public module of this package that declares ``COMMAND`` (its name) and ``HELP``
(one line) and defines ``main(argv) -> int``; nothing else lists it. :func:`available_commands`
reads those two declarations from the modules' source without importing them, so that
``mixerlab list`` does not pay for Hydra, nor ``mixerlab compare`` for torch and Lightning.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass

DECLARATIONS = ("COMMAND", "HELP")


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, its one-line help and the module whose ``main`` runs it."""

    name: str
    help: str
    module: str


def _declarations(module: str) -> dict[str, str]:
    """The module's top-level string constants named in :data:`DECLARATIONS`, from its source."""
    spec = importlib.util.find_spec(module)
    source = spec.loader.get_source(module) if spec and spec.loader else None
    found = {}
    for node in ast.parse(source or "").body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in DECLARATIONS:
                found[target.id] = ast.literal_eval(node.value)
    return found


def available_commands() -> list[Command]:
    """Every command, by name: each public module of this package (see the module docstring)."""
    commands = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = f"{__name__}.{info.name}"
        declared = _declarations(module)
        if set(declared) != set(DECLARATIONS):
            raise RuntimeError(f"{module} is a command module: it must declare COMMAND and HELP")
        commands.append(Command(declared["COMMAND"], declared["HELP"], module))
    return sorted(commands, key=lambda command: command.name)


def _usage(commands: Sequence[Command]) -> str:
    width = max(len(command.name) for command in commands)
    lines = [f"  {command.name:<{width}}  {command.help}" for command in commands]
    return (
        "usage: mixerlab COMMAND [ARGS...]\n\ncommands:\n"
        + "\n".join(lines)
        + ("\n\n`mixerlab COMMAND --help` shows a command's own options.")
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = available_commands()
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(commands))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    command = next((command for command in commands if command.name == name), None)
    if command is None:
        print(f"mixerlab: unknown command {name!r}\n\n{_usage(commands)}", file=sys.stderr)
        return 2
    return int(importlib.import_module(command.module).main(rest) or 0)
