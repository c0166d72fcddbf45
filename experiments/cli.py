"""The ``mixerlab`` command: one entry point, subcommands imported only when used.

mixerlab train [hydra overrides and flags]   # train (Hydra app: -m, --cfg job, --help, ...)
mixerlab list                                # mixers, tasks, experiments and plots
mixerlab compare RUN_DIR...                  # tables and curves over finished runs
mixerlab dashboard RUN_DIR...                # the same runs as a W&B report
mixerlab bench [NAME...]                     # speed benchmarks
mixerlab wandb-sweep sweep=NAME [overrides]  # a W&B sweep file for a grid-sweep preset
mixerlab new-mixer NAME [--dir DIR]          # a plugin package with a mixer to start from
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from importlib.resources import files

COMMANDS = {
    "train": "train a model (a Hydra app: overrides, -m, --cfg job, --help, --info)",
    "list": "list the mixers, tasks, experiments and plots",
    "compare": "compare finished runs: tables and curves",
    "dashboard": "a W&B report of the same runs (online; offline it prints the plan)",
    "bench": "speed benchmarks (tokens/s, Lightning overhead, reference models)",
    "wandb-sweep": "write a W&B sweep file for a grid-sweep preset (sweep=mixers_lr ...)",
    "new-mixer": "write a plugin package with a working mixer to start from",
}
# Modules with main(argv) -> int, imported only when their command runs, so that `mixerlab list`
# does not pay for Hydra, nor `mixerlab compare` for torch and Lightning.
MODULES = {
    "train": "mixerlab.experiments.train",
    "compare": "mixerlab.experiments.compare",
    "dashboard": "mixerlab.experiments.dashboard",
    "bench": "mixerlab.experiments.bench",
    "wandb-sweep": "mixerlab.experiments.wandb_sweep",
    "new-mixer": "mixerlab.experiments.new_mixer",
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, help_ in COMMANDS.items()]
    return (
        "usage: mixerlab COMMAND [ARGS...]\n\ncommands:\n"
        + "\n".join(lines)
        + ("\n\n`mixerlab COMMAND --help` shows a command's own options.")
    )


def _conf_entries(group: str) -> list[tuple[str, str]]:
    """(name, text) of every YAML file of a config group shipped in the ``conf`` package."""
    folder = files("mixerlab.conf") / group
    if not folder.is_dir():
        return []
    entries = [
        (entry.name.removesuffix(".yaml"), entry.read_text())
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    ]
    return sorted(entries)


def _first_comment(text: str) -> str:
    """An experiment's description: its first comment line that is not a Hydra header."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and not stripped.lstrip("# ").startswith("@"):
            return stripped.lstrip("# ").strip()
    return ""


def list_components() -> dict[str, list[tuple[str, str]]]:
    """What can be combined: registered mixers and tasks (plugins too), mixer presets and
    experiments shipped in conf/, and the plots `mixerlab compare` draws."""
    from mixerlab.experiments.compare.plots import registered_plots
    from mixerlab.lightning_modules.tasks import available_tasks, describe_task
    from mixerlab.mixers import available_mixers, describe_mixer

    return {
        "mixers": [(name, describe_mixer(name)) for name in available_mixers()],
        # conf/mixer options that are not a mixer's own file: settings of one, or hybrids
        "mixer presets": [
            (name, _first_comment(text))
            for name, text in _conf_entries("mixer")
            if name not in available_mixers() and name != "plugin"
        ],
        "tasks": [(name, describe_task(name)) for name in available_tasks()],
        "experiments": [(name, _first_comment(text)) for name, text in _conf_entries("experiment")],
        "plots": [(plot.file, plot.description) for plot in registered_plots()],
    }


def _print_list(argv: Sequence[str]) -> int:
    if argv:
        asked = argv[0] in ("-h", "--help")  # help goes to stdout, a usage error to stderr
        print(
            "usage: mixerlab list   (takes no arguments)", file=sys.stdout if asked else sys.stderr
        )
        return 0 if asked else 2
    sections = list_components()
    width = max(len(name) for entries in sections.values() for name, _ in entries)
    usage = {
        "mixers": "mixer=<name>",
        "mixer presets": "mixer=<name>",
        "tasks": "task=<name>",
        "experiments": "experiment=<name>",
        "plots": "written by mixerlab compare",
    }
    for section, entries in sections.items():
        print(f"{section} ({usage[section]}):")
        for name, description in entries:
            print(f"  {name:<{width}}  {description}")
        print()
    print("A plugin mixer without a conf file: mixer=plugin mixer.name=<name> +mixer.<hparam>=...")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"mixerlab: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if command == "list":
        return _print_list(rest)
    module = importlib.import_module(MODULES[command])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
