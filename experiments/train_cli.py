"""The command-line side of ``mixerlab train``: what it says when the command line is wrong, in
place of Hydra's own messages, and what it leaves behind.

Left to itself, Hydra answers a mistyped key with advice to add it (``+model.d_modle=64``), a
mistyped group option with a list and no suggestion, and creates the run folder before anything
looks at the config. Here :class:`CheckConfigBeforeRun` validates a run's config before Hydra
creates its folder (``conf/hydra/default.yaml`` registers it),
:func:`composition_error_message` turns Hydra's composition errors into one line naming the
closest key or option, and :func:`remove_run_dir` takes away the folder of a run that a config
error stopped while it was being built. :func:`hydra_raising_errors` has Hydra raise its errors
for that instead of printing them, and :func:`logging_restored` undoes the logging Hydra sets up
for a run (the terminal and train.log), for a process that runs several (tests, a notebook).
:func:`check_overrides` refuses what Hydra would fail on with a traceback, and
:func:`expand_resume` turns ``resume=<run dir>`` into that run's command line.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import shutil
import sys
import traceback
from collections.abc import Iterator, Sequence
from importlib.resources import files
from pathlib import Path
from types import CodeType
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from mixerlab.experiments.config_types import shown, unknown_key
from mixerlab.experiments.run_identity import check_run_dir
from mixerlab.experiments.schema import ConfigError, validate_config
from mixerlab.mixers import available_mixers

PREFIX = "mixerlab train: "
# The loggers conf/hydra/default.yaml configures: the root and Lightning's (which it makes pass
# their records on to the root's handlers).
HYDRA_CONFIGURED_LOGGERS = ("", "pytorch_lightning", "lightning_fabric")
SEE_ALSO = (
    "`mixerlab train --help` lists the config groups and `mixerlab list` the mixers, tasks and "
    "experiments"
)


class CheckConfigBeforeRun(Callback):
    """Validates a single run's config before Hydra creates the run folder, so a bad command
    line leaves no folder behind; Hydra names the folder after ``mixer.name``, so without this
    ``mixer=plugin`` and no ``mixer.name`` fails inside Hydra with a long traceback. (Each job
    of a sweep is validated as it starts: the jobs' configs differ.) An existing run folder that
    holds a run of another config is refused here too, before Hydra rewrites its ``.hydra/``
    (which ``resume=<dir>`` reads the run's overrides from)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            job = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
            validate_config(job)
            # a run folder of another config is refused before Hydra rewrites its .hydra/
            check_run_dir(job, Path(str(config.hydra.run.dir)).resolve())
        except ConfigError as err:  # Hydra would turn an exception into a warning and go on
            report_config_error(err)
            raise SystemExit(2) from None


def report_config_error(err: ConfigError, job: str | None = None) -> None:
    """The message alone (a config error needs no traceback), naming the sweep's job if any."""
    print(f"{PREFIX}{f'job {job}: ' if job else ''}{err}", file=sys.stderr)


def composition_error_message(err: Exception) -> str:
    """One message for a command line Hydra cannot compose, with the closest names."""
    if isinstance(err, MissingConfigException) and err.options and "/" in err.missing_cfg_file:
        return PREFIX + _unknown_option(err.missing_cfg_file, err.options)
    cause = err.__cause__
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        parent = cause.parent_node
        if isinstance(parent, DictConfig):
            return PREFIX + _unknown_key(cause.full_key, [str(key) for key in parent])
    detail = f"\n{cause}" if cause is not None else ""
    return f"{err}{detail}\n{PREFIX}the config could not be composed; {SEE_ALSO}"


def _unknown_key(key: str, names: list[str]) -> str:
    """A key that is not in the config (Hydra's struct mode refuses to add it)."""
    parent = key.rpartition(".")[0]
    if not parent:  # a top-level name may also be meant as a config group: mixr=gmlp
        groups = [entry.name for entry in files("mixerlab.conf").iterdir() if entry.is_dir()]
        if key in groups:  # debug={...}: a group no option of which is selected has no keys
            return (
                f"{key} is a config group with no option selected, so it has no keys to set; "
                f"select one with {key}=<option> (`mixerlab train --help` lists them)"
            )
        names = sorted(set(names) | {g for g in groups if not g.startswith("_")})
    message = unknown_key(key, names, parent or "the top level")
    if parent == "mixer":  # a hyper-parameter the mixer's conf file does not list
        message += f"\n(a keyword argument its conf file does not list: +{key}=<value>)"
    return message


def _unknown_option(missing: str, options: list[str]) -> str:
    """``group=option`` where the group has no such option (no ``conf/<group>/<option>.yaml``)."""
    group, _, option = missing.rpartition("/")
    close = difflib.get_close_matches(option, options, n=1)
    hint = f" (did you mean {group}={close[0]}?)" if close else ""
    message = (
        f"{group}={option}: the config group {group} has no option {option!r}{hint}; "
        f"its options: {', '.join(options)}"
    )
    if group == "mixer" and option in available_mixers():
        message += (
            f"\n{option} is a registered mixer without a conf file: "
            f"train it with mixer=plugin mixer.name={option}"
        )
    return message


def print_traceback_from(err: BaseException, task_function: CodeType) -> None:
    """The stack trace of a failed run from the task function on, without Hydra's frames (as
    Hydra prints it); the whole trace when the error did not come from the task function."""
    tb = err.__traceback__
    while tb is not None and tb.tb_frame.f_code is not task_function:
        tb = tb.tb_next
    traceback.print_exception(type(err), err, tb or err.__traceback__)


def holds_only_hydra_files(run_dir: Path, log_file: str) -> bool:
    """Whether ``run_dir`` is what Hydra makes for a new run (its config and an empty log);
    a resumed run's folder holds more."""
    if {path.name for path in run_dir.iterdir()} - {".hydra", log_file}:
        return False
    return not (run_dir / log_file).exists() or (run_dir / log_file).stat().st_size == 0


def remove_run_dir(run_dir: Path) -> None:
    """Remove a run's folder and the folders above it that it leaves empty, up to the working
    directory (``runs/<date>/``)."""
    shutil.rmtree(run_dir)
    cwd = Path.cwd()
    for parent in run_dir.parents:
        if cwd not in parent.parents or any(parent.iterdir()):
            break
        parent.rmdir()


@contextlib.contextmanager
def hydra_raising_errors() -> Iterator[None]:
    """Hydra raises its errors instead of printing them (its documented switch,
    ``HYDRA_FULL_ERROR=1``), so that ``mixerlab train`` reports them: one message for a bad
    command line, a traceback only for a failed run."""
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["HYDRA_FULL_ERROR"]
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved


@contextlib.contextmanager
def logging_restored() -> Iterator[None]:
    """The handlers of the loggers Hydra configures as they were before: Hydra's point at the
    run's terminal streams and train.log, which a later run in the process must not write to."""
    loggers = [logging.getLogger(name) for name in HYDRA_CONFIGURED_LOGGERS]
    saved = [(logger.handlers[:], logger.propagate) for logger in loggers]
    try:
        yield
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved, strict=True):
            for handler in set(logger.handlers) - set(handlers):
                handler.close()
            logger.handlers[:] = handlers
            logger.propagate = propagate


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


OVERRIDE_GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"
MAX_FILE_NAME_BYTES = 255  # a config group's option is a file name: <group>/<option>.yaml


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


def is_flag_error(err: BaseException) -> bool:
    """Whether Hydra refused its flags (``--resolve`` without ``--cfg``, ``-m`` with ``--cfg``):
    a ValueError raised by Hydra's entry function itself, before anything ran."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    frame = tb.tb_frame if tb is not None else None
    return (
        isinstance(err, ValueError)
        and frame is not None
        and frame.f_code.co_name == "_run_hydra"
        and frame.f_globals.get("__name__") == "hydra._internal.utils"
    )


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
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.exists():
        raise ConfigError(
            f"resume={run_dir}: {saved} not found; pass the directory of a run started by "
            "`mixerlab train` (it holds .hydra/ and checkpoints/)"
        )
    merged: dict[str, str] = {}
    # overwrite=true was an instruction to that launch: resuming must not empty the folder again
    kept = [o for o in yaml.safe_load(saved.read_text()) if not o.startswith("overwrite=")]
    for override in [*kept, *overrides]:
        if not override.startswith("resume="):
            merged[override.split("=", 1)[0].lstrip("+~")] = override
    return [*flags, *merged.values(), f"hydra.run.dir={run_dir.resolve()}"]
