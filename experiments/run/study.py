"""A study: a named folder in the repository that holds a sweep's fixed command and the records
of its runs, so that the sweep outlives the machine that ran it.

    studies/<name>/
        study.yaml               name, and commands: each launch (its overrides as typed, multirun)
        runs/<job name>/         one folder per job, named by its own overrides (job_name)
            results.json  metrics.csv  .hydra/config.yaml  .hydra/overrides.yaml     tracked
            checkpoints/  wandb/  train.log  .hydra/hydra.yaml                       ignored
        README.md  comparison/   written by hand, and by `mixerlab compare studies/<name>`

``mixerlab train [-m] ... study=<name>`` writes its runs there (``conf/hydra/default.yaml`` asks
:func:`runs_dir_of` and :func:`job_dir_of` through resolvers) and records its command in
``study.yaml`` (:func:`record_command`). A job's folder name is stable: the same command on another
machine, or a fresh clone, gives the same folders, so the run folder's identity check skips every
job whose committed record says ``finished`` and trains the rest
(``mixerlab.experiments.run.run_folder``).

Plain Python (no torch, Lightning or Hydra): ``mixerlab compare`` reads studies too.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mixerlab.experiments.run.config_values import shown
from mixerlab.lightning_modules.record import write_atomic

STUDIES_DIR = "studies"  # relative to the working directory, like runs/
STUDY_FILE = "study.yaml"
RUNS_DIR = "runs"
DEFAULT_JOB = "default"  # the folder of a job with no override that names it
NAME_RULE = re.compile(r"[A-Za-z0-9_-]+")
NAME_RULE_TEXT = "letters, digits, '_' and '-' only (a folder name under studies/, no '/')"
MAX_NAME_CHARS = 100
# Overrides that say nothing about what a run learns, only how one launch runs, shows and stores
# it (the progress bar, W&B, the data cache, overwrite=true, the launcher and its settings): left
# out of the command a study records, so launching it again with another of them (joblib here,
# SLURM there) is the same command. A key matches itself and every key below it.
LAUNCH_ONLY_KEYS = (
    "callbacks.progress_bar",
    "logger",
    "cache_dir",
    "overwrite",
    "launcher",
    "hydra.launcher",
)
# Overrides that leave a job's folder name: the same for every job of a study (which study, the
# experiment or sweep preset, the launcher, Hydra's own settings), or launch-only.
NAMELESS_KEYS = ("study", "experiment", "sweep", "launcher", "hydra", *LAUNCH_ONLY_KEYS)
# A job name longer than this (in UTF-8 bytes; file names may have 255) is cut, and ends with a
# hash of the whole name instead, so it stays one valid, stable and distinct folder name.
MAX_JOB_NAME_BYTES = 200
HASH_CHARS = 12
# Characters a folder name cannot hold (or that would change its meaning), written %XX as in a
# URL: '/' (a file path given as a value), '\' and '%' itself, so different values never meet.
ESCAPED = re.compile(r"[/\\%\x00-\x1f\x7f]")

Recorded = Literal["created", "appended", "known"]


class StudyError(ValueError):
    """A study name that breaks the rule, or a study folder that cannot be read."""


@dataclass(frozen=True)
class Command:
    """One launch of a study: its overrides as typed (``study=`` left out) and whether it was a
    multirun (``-m``)."""

    overrides: tuple[str, ...]
    multirun: bool = False

    def argv(self, study: str) -> list[str]:
        """The ``mixerlab train`` arguments that launch it again."""
        return [*(["-m"] if self.multirun else []), *self.overrides, f"study={study}"]

    def same_as(self, other: Command) -> bool:
        """The same launch, the overrides in any order."""
        return self.multirun == other.multirun and sorted(self.overrides) == sorted(other.overrides)


@dataclass
class Study:
    """A study as its ``study.yaml`` records it, and the folder that holds it."""

    name: str
    commands: list[Command] = field(default_factory=list)
    folder: Path = Path()

    @property
    def runs(self) -> Path:
        """The folder of the study's run folders, one per job."""
        return self.folder / RUNS_DIR


def name_problem(name: Any) -> str | None:
    """What is wrong with ``name`` as a study's name, None if nothing (digits alone are a name:
    ``study=2024`` arrives as an integer)."""
    text = str(name) if isinstance(name, int) and not isinstance(name, bool) else name
    if isinstance(text, str) and NAME_RULE.fullmatch(text) and len(text) <= MAX_NAME_CHARS:
        return None
    return (
        f"study={shown(name)} is not a study name: {NAME_RULE_TEXT}, at most {MAX_NAME_CHARS} "
        "characters (e.g. study=mixers_mqar_lr)"
    )


def check_name(name: Any) -> str:
    """``name`` as a study's name (text), or StudyError saying the rule."""
    problem = name_problem(name)
    if problem:
        raise StudyError(problem)
    return str(name)


def study_dir(name: str, root: Path | None = None) -> Path:
    """The folder of study ``name``: ``<root>/studies/<name>`` (root: the working directory)."""
    return (Path.cwd() if root is None else root) / STUDIES_DIR / check_name(name)


def job_name(overrides: Iterable[str]) -> str:
    """The folder name of a study's job from its own overrides (``hydra.overrides.task``): as
    Hydra's ``hydra.job.override_dirname``, the overrides as typed, sorted, joined by ``,``, less
    those under :data:`NAMELESS_KEYS`; ``default`` when none is left. ``/``, ``\\``, ``%`` and
    control characters are written ``%XX``; a name over :data:`MAX_JOB_NAME_BYTES` is cut and ends
    in ``~`` and a hash of the whole name.

    >>> job_name(["seed=0", "mixer=attention", "study=lr", "logger=none", "optim.lr=0.0001"])
    'mixer=attention,optim.lr=0.0001,seed=0'
    """
    kept = sorted(str(o) for o in overrides if not sets_any(str(o), NAMELESS_KEYS))
    name = ESCAPED.sub(lambda m: f"%{ord(m.group()):02X}", ",".join(kept)) or DEFAULT_JOB
    if len(name.encode()) <= MAX_JOB_NAME_BYTES:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:HASH_CHARS]
    room = MAX_JOB_NAME_BYTES - HASH_CHARS - 1
    return f"{name.encode()[:room].decode(errors='ignore')}~{digest}"


def sets_any(override: str, keys: Iterable[str]) -> bool:
    """The override sets (or deletes) one of ``keys`` or a key below one (``+``, ``~``,
    ``@package`` and group paths ``a/b`` read as keys)."""
    key = override.lstrip("+~").split("=", 1)[0].split("@", 1)[0].replace("/", ".")
    return any(key == k or key.startswith(f"{k}.") for k in keys)


def runs_dir_of(study: Any, default: str) -> str:
    """Hydra's sweep folder (resolver ``mixerlab.study_runs``): ``studies/<study>/runs`` for a
    study, else ``default``."""
    return default if study is None else str(study_dir(str(study), Path()) / RUNS_DIR)


def job_dir_of(study: Any, overrides: Iterable[str], default: str) -> str:
    """A job's folder in the sweep folder (resolver ``mixerlab.study_job``): its
    :func:`job_name` in a study, else ``default``."""
    return default if study is None else job_name(overrides)


def read_study(name_or_dir: str | Path, root: Path | None = None) -> Study:
    """The study named so (under ``<root>/studies/``), or in that folder (one holding
    ``study.yaml``, or any path with a ``/``). StudyError when it cannot be read."""
    given = Path(name_or_dir)
    folder = given
    if not (given / STUDY_FILE).is_file() and len(given.parts) == 1:
        folder = study_dir(str(name_or_dir), root)
    path = folder / STUDY_FILE
    try:
        data = yaml.safe_load(path.read_text())
        commands = [
            Command(tuple(str(o) for o in c["overrides"]), bool(c.get("multirun", False)))
            for c in data["commands"]
        ]
        return Study(check_name(data["name"]), commands, folder)
    except FileNotFoundError:
        raise StudyError(f"no study in {folder}: {path} not found") from None
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise StudyError(f"{path} cannot be read ({type(err).__name__}: {err})") from None


def write_study(study: Study) -> Path:
    """Write the study's ``study.yaml`` (atomically); returns its path."""
    commands = [{"overrides": list(c.overrides), "multirun": c.multirun} for c in study.commands]
    data = {"name": study.name, "commands": commands}
    header = (
        f"# Study {study.name}: written by `mixerlab train ... study={study.name}`. Each command\n"
        f"# launched runs into runs/; run it again (-m for multirun: true) to resume the study.\n"
    )
    study.folder.mkdir(parents=True, exist_ok=True)
    path = study.folder / STUDY_FILE
    write_atomic(path, header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def record_command(name: str, command: Command, root: Path | None = None) -> Recorded:
    """Add ``command`` to study ``name``'s ``study.yaml``: ``created`` (the study's first
    launch), ``appended`` (a new command: the study grows), or ``known`` (unchanged)."""
    folder = study_dir(name, root)
    if not (folder / STUDY_FILE).exists():
        write_study(Study(check_name(name), [command], folder))
        return "created"
    study = read_study(folder)
    if any(command.same_as(known) for known in study.commands):
        return "known"
    study.commands.append(command)
    write_study(study)
    return "appended"


def forget_command(name: str, command: Command, root: Path | None = None) -> None:
    """Take ``command`` out of study ``name`` again (a launch that trained nothing: a bad command
    line or config); a study left without commands is removed with the folders it leaves empty.
    """
    folder = study_dir(name, root)
    study = read_study(folder)
    for i in reversed(range(len(study.commands))):
        if study.commands[i].same_as(command):
            del study.commands[i]
            break
    if study.commands:
        write_study(study)
        return
    (folder / STUDY_FILE).unlink()
    for empty in (folder / RUNS_DIR, folder, folder.parent):
        if empty.is_dir() and not any(empty.iterdir()):
            empty.rmdir()
