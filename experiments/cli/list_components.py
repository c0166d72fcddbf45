"""``mixerlab list``: what can be combined, with a line on each: registered mixers and tasks
(plugins too), the mixer presets, experiments and seq2seq designs shipped in conf/, and the plots
``mixerlab compare`` draws."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.resources import files

COMMAND = "list"
HELP = "list the mixers, tasks, experiments, seq2seq designs and plots"


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


def _mixers_used(text: str) -> list[str]:
    """The registered mixers a conf/mixer option builds: its ``name``, or a hybrid's entries."""
    import yaml

    from mixerlab.experiments.run.mixer_node import mixer_names

    return [str(name) for name in mixer_names(yaml.safe_load(text) or {}) if name]


def list_components() -> dict[str, list[tuple[str, str]]]:
    """What can be combined: registered mixers and tasks (plugins too), mixer presets and
    experiments shipped in conf/, and the plots `mixerlab compare` draws. A registered mixer
    without a conf file of its own (``ssm``, whose family members are the presets ``mamba`` and
    ``s4d``) names the presets that build it."""
    from mixerlab.experiments.compare.plots import registered_plots
    from mixerlab.lightning_modules.tasks import available_tasks, describe_task
    from mixerlab.mixers import available_mixers, describe_mixer

    options = dict(_conf_entries("mixer"))
    presets = {
        name: text
        for name, text in options.items()
        if name not in available_mixers() and name != "plugin"
    }
    used_by = {
        mixer: [name for name, text in presets.items() if mixer in _mixers_used(text)]
        for mixer in available_mixers()
    }

    def mixer_line(name: str) -> str:
        if name in options:
            return describe_mixer(name)
        shown = ", ".join(used_by[name]) or f"none; mixer=plugin mixer.name={name}"
        return f"{describe_mixer(name)} [presets: {shown}]"

    return {
        "mixers": [(name, mixer_line(name)) for name in available_mixers()],
        # conf/mixer options that are not a mixer's own file: named settings of one, or hybrids
        "mixer presets": [
            (name, f"{_first_comment(text)} [{', '.join(_mixers_used(text))}]")
            for name, text in presets.items()
        ],
        "tasks": [(name, describe_task(name)) for name in available_tasks()],
        "experiments": [(name, _first_comment(text)) for name, text in _conf_entries("experiment")],
        "designs": [(name, _first_comment(text)) for name, text in _conf_entries("design")],
        "plots": [(plot.file, plot.description) for plot in registered_plots()],
    }


def main(argv: Sequence[str]) -> int:
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
        "designs": "design=<name>, for a seq2seq task",
        "plots": "written by mixerlab compare",
    }
    for section, entries in sections.items():
        print(f"{section} ({usage[section]}):")
        for name, description in entries:
            print(f"  {name:<{width}}  {description}")
        print()
    print("A plugin mixer without a conf file: mixer=plugin mixer.name=<name> +mixer.<hparam>=...")
    return 0
