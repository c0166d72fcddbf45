"""``mixerlab train``'s command line, read before Hydra reads it.

Hydra fails on some command lines with a traceback, or with a message that does not say which
override it means; :func:`check_overrides` and :func:`check_flags` refuse those first, with one
message each (a :class:`ConfigError`). :func:`split_hydra_argv` tells Hydra's flags from the
overrides, :func:`expand_resume` turns ``resume=<run dir>`` into that run's command line, and
:func:`study_launch` reads the study a command line trains in, and the command it records there.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, OverrideParseException

from mixerlab.experiments.cli._hydra_adapter import parse_flags
from mixerlab.experiments.run.config_values import shown
from mixerlab.experiments.run.run_folder import launch_overrides
from mixerlab.experiments.run.schema import ConfigError
from mixerlab.experiments.run.study import LAUNCH_ONLY_KEYS, Command, name_problem, sets_any

# Hydra's command-line flags that take a value (the next argument unless given as --flag=value);
# --info/-i takes the next argument only when it is one of its topics.
HYDRA_VALUE_FLAGS = frozenset(
    {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn"}
    | {"--config-dir", "-cd", "--experimental-rerun"}
)
HYDRA_INFO_FLAGS = frozenset({"--info", "-i"})
HYDRA_INFO_TOPICS = frozenset(
    {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
)
OVERRIDE_GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"
MAX_FILE_NAME_BYTES = 255  # a config group's option is a file name: <group>/<option>.yaml
# Where Hydra puts a run or a sweep: a study decides that itself (studies/<name>/runs/<job name>).
RUN_FOLDER_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir")


def split_hydra_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(flags with their values, overrides) of a Hydra command line, each in the given order."""
    flags: list[str] = []
    overrides: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-"):
            overrides.append(arg)
            continue
        flags.append(arg)
        takes_value = arg in HYDRA_VALUE_FLAGS or (
            arg in HYDRA_INFO_FLAGS and i < len(args) and args[i] in HYDRA_INFO_TOPICS
        )
        if takes_value and i < len(args):
            flags.append(args[i])
            i += 1
    return flags, overrides


def expand_resume(argv: Sequence[str]) -> list[str]:
    """``resume=<run dir>`` -> that run's overrides + the given ones + ``hydra.run.dir=<dir>``.

    Flags (``--config-dir`` and the like) stay in front; a given override replaces the run's
    override of the same key.
    """
    flags, overrides = split_hydra_argv(argv)
    resume = [arg for arg in overrides if arg.startswith("resume=")]
    if not resume:
        return list(argv)
    run_dir = Path(resume[-1].split("=", 1)[1]).expanduser()
    merged: dict[str, str] = {}
    for override in [*launch_overrides(run_dir), *overrides]:
        if not override.startswith("resume="):
            merged[override.split("=", 1)[0].lstrip("+~")] = override
    return [*flags, *merged.values(), f"hydra.run.dir={run_dir.resolve()}"]


def study_launch(argv: Sequence[str]) -> tuple[str, Command] | None:
    """The study (``study=<name>``) this command line trains in and the command it records there
    (its overrides as typed less ``study=``, and ``-m``), or None: no study, or a command line
    that trains nothing (``--cfg``, ``--info``, ``--help``), or one that continues a run
    (``resume=<dir>``: the job's own command is already recorded). ConfigError for a name that
    breaks the rule, and for a study with its own run folder (``hydra.run.dir`` and the like)."""
    overrides = split_hydra_argv(argv)[1]
    args = parse_flags(argv)
    trains = args is not None and args.cfg is None and args.experimental_rerun is None
    if not trains or args.info is not None or args.help or args.hydra_help:
        return None
    if args.shell_completion or any(o.startswith("resume=") for o in overrides):
        return None
    parser = OverridesParser.create()
    named = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] == "study"]
    if not named:
        return None
    (study,) = parser.parse_overrides([named[-1]])
    name = None if study.is_delete() else study.value()
    if name is None:
        return None
    problem = name_problem(name)
    if problem:
        raise ConfigError(problem)
    placed = [o for o in overrides if o.split("=", 1)[0].lstrip("+") in RUN_FOLDER_KEYS]
    if placed:
        raise ConfigError(
            f"{placed[0]}: study={name} places its runs itself, in studies/{name}/runs/<job "
            "name>; leave out the run folder, or the study"
        )
    kept = tuple(o for o in overrides if o not in named and not sets_any(o, LAUNCH_ONLY_KEYS))
    return str(name), Command(kept, multirun=bool(args.multirun))


def check_flags(argv: Sequence[str]) -> None:
    """Refuse Hydra's flags that do not go together, as Hydra refuses them once it runs:
    ``--resolve`` without ``--cfg`` (or ``--help``), and more than one of ``--run``,
    ``--multirun``, ``--cfg``, ``--info`` and ``--shell-completion``. A command line Hydra's
    parser rejects itself passes here: Hydra's own usage message says what is wrong."""
    args = parse_flags(argv)
    if args is None or args.experimental_rerun is not None or args.help:
        return
    problem = None
    if args.resolve and args.cfg is None:
        problem = "The --resolve flag can only be used in conjunction with --cfg or --help"
    elif not args.hydra_help:
        commands = (args.run, args.cfg is not None, args.multirun, args.shell_completion)
        if sum(commands) + (args.info is not None) > 1:
            problem = (
                "Only one of --run, --multirun, --cfg, --info and --shell_completion can be "
                "specified"
            )
    if problem:
        raise ConfigError(f"{problem}; see `mixerlab train --help`")


def check_overrides(overrides: Sequence[str]) -> None:
    """Overrides Hydra would fail on with a traceback, or with a message that does not say which
    override it means: ``=5`` (no key: a config group named ''), a config group set to no
    option's name (``debug=null``, ``launcher=[null]``, ``~mixer=3``, a name too long for a
    file), a number of more digits than Python converts, and syntax Hydra cannot parse."""
    parser = OverridesParser.create()
    for text in overrides:
        key, sep, _ = text.partition("=")
        if sep and not key.lstrip("+~"):
            raise ConfigError(
                f"{shown(text)}: an override needs a key before '=' "
                "(key=value, e.g. model.d_model=64 or mixer=gmlp)"
            )
        try:
            (override,) = parser.parse_overrides([text])
        except (OverrideParseException, ValueError) as err:
            raise ConfigError(
                f"{shown(text)} is not an override Hydra can parse ({_parse_problem(err)}); "
                "write key=value, quoting a value with spaces, brackets or other special "
                f"characters (key='a b'); the grammar: {OVERRIDE_GRAMMAR}"
            ) from None
        _check_group_choice(override, text)


def _parse_problem(err: Exception) -> str:
    """The line of Hydra's (or Python's) parse error that says what is wrong."""
    for line in str(err).splitlines():
        if line.startswith("LexerNoViableAltException"):
            return "a character the grammar does not accept there"
        if line.strip() and not line.startswith(("Error parsing override", "See ")):
            return line.split("; ")[0].split(" expecting ")[0].strip()
    return type(err).__name__


def _check_group_choice(override: Override, text: str) -> None:
    """A config group's value names its options (a list of them, or a sweep over them)."""
    group = override.key_or_group
    if "/" not in group and not (files("mixerlab.conf") / group).is_dir():
        return  # a config key, not a group
    value = override.value()
    if override.is_sweep_override():
        try:
            choices = list(override.sweep_iterator())
        except HydraException:  # a glob: Hydra matches it against the options itself
            return
    elif isinstance(value, dict) and not override.is_delete():
        return  # merged into the group's node, as a config key's value
    elif override.is_delete():
        choices = [] if value is None else [value]
    else:
        choices = value if isinstance(value, list) else [value]
    for choice in choices:
        if not isinstance(choice, str) or len(choice.encode()) > MAX_FILE_NAME_BYTES:
            got = "null" if choice is None else shown(choice)
            raise ConfigError(
                f"{shown(text)}: the config group {group} takes the name of one of its options, "
                f"got {got}; ~{group} removes the group, and `mixerlab train --help` lists the "
                "groups and their options"
            )
