"""A run folder belongs to the config it was made with.

Training into a folder that already holds a run continues that run: its newest checkpoint, its
``metrics.csv``, its W&B run. That is right for the same config (resumed after an interruption,
or given a larger budget: ``resume=<dir> trainer.max_steps=2000``) and wrong for any other: the
old weights would be trained on and the old metrics reported under the new config, without a
word. So before any work :func:`claim_run_dir` compares the config with the one the folder's
``results.json`` records, and

- refuses one that differs in a key that can change the result (ConfigError naming each key
  with both values, and the two ways out: a folder of its own, or ``overwrite=true``);
- skips a run that already ``finished`` with this config and budget, returning its record: a
  re-run sweep repeats only the jobs that did not finish, and an Optuna study still gets every
  job's value;
- otherwise lets the run resume (interrupted, killed, failed, or trained further).

A run resumes from the folder's newest checkpoint. Where the folder holds a record but no
checkpoint (a study's job on a fresh clone: records are committed, checkpoints never are; a run
killed before its first checkpoint), the run trains from the start, and
:func:`restart_from_scratch` discards the old record and ``metrics.csv`` first: continued, they
would lend the new run the old rows, wall clock and W&B run.

``results.json`` is the record, not ``.hydra/config.yaml``: Hydra rewrites ``.hydra/`` on every
launch, before the run can look, while ``results.json`` is written by the run itself (atomically,
from its first second), holds the resolved and validated config, and exists for runs started
without Hydra (``mixerlab.experiments.run.train.train``) too. ``overwrite=true`` discards the
folder's results and checkpoints (mixerlab's own files only, :data:`RUN_FILES`) and trains afresh.

The folder also says how the run was launched: :func:`launch_overrides` reads the overrides Hydra
saved there, which ``resume=<run dir>`` repeats. A folder Hydra made for a run that a config error
stopped holds nothing else (:func:`holds_only_hydra_files`) and is taken away again
(:func:`remove_run_dir`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from mixerlab.experiments.run.config_values import flatten
from mixerlab.experiments.run.schema import ConfigError, validate_config
from mixerlab.lightning_modules.record import (
    CHECKPOINT_DIR,
    HISTORY_FILE,
    RESULTS_FILE,
    read_record,
    write_atomic,
)

log = logging.getLogger(__name__)

# Keys that only say how long to train. A resume may change them (train longer); a finished run
# given another value is resumed, not skipped. (A budget below the step a checkpoint already
# reached is refused where the checkpoint is loaded: mixerlab.experiments.run.start_checkpoint.)
BUDGET_KEYS = ("trainer.max_steps",)
# Keys (and whole nodes) that cannot change what a run learns or measures: how it is shown
# (progress bar) or mirrored (W&B or not, and W&B's project, tags, ...), where the dataset cache
# lives (the data is the same wherever it is cached), `overwrite`, an instruction to one
# launch rather than part of the run, and `study`, which says where the run folder is (records of
# runs made before studies lack it). `name` is not here: `mixerlab compare` groups runs by it.
UNRECORDED_KEYS = ("callbacks.progress_bar", "logger", "cache_dir", "overwrite", "study")
# What a run writes into its folder besides Hydra's .hydra/ and its log: what `overwrite=true`
# removes (checkpoints: the *.ckpt files of the checkpoints/ folder, which goes if left empty).
RUN_FILES = (RESULTS_FILE, HISTORY_FILE)


class _Absent:
    """The value of a key one config has and the other lacks (an older mixerlab's record)."""

    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()
SHOWN_DIFFERENCES = 12  # a changed task or mixer differs in many keys: the first ones say enough
FIX = (
    "To train this config, give it a folder of its own (another hydra.run.dir, or "
    "hydra.sweep.dir for a sweep), or add overwrite=true to discard the folder's results and "
    "checkpoints and train afresh there."
)


def claim_run_dir(cfg: DictConfig | Mapping[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """Make ``run_dir`` ready for the (validated) config ``cfg``: with ``overwrite``, discard what
    an earlier run left there; else check it (:func:`check_run_dir`). Returns the record of a run
    that already finished with this config and budget (the caller skips training and reports its
    ``best``), else None; says which, and when a run is trained further."""
    if cfg["overwrite"]:
        if rank_zero_only.rank == 0:  # DDP: the other ranks start after rank 0 began the run
            discard_run(run_dir, cfg["ckpt_path"])
        return None
    record = check_run_dir(cfg, run_dir)
    if record is None:
        return None
    config = _resolved(cfg)
    changed = differences(record["config"], config)  # the budget and what follows from it
    if not changed and record.get("status") == "finished":
        monitor = config["callbacks"]["checkpoint"]["monitor"]
        best = (record.get("best") or {}).get(monitor)
        shown = f"{best:.4f}" if isinstance(best, float) and math.isfinite(best) else "-"
        if config.get("study"):  # a committed record stands for the job on any machine
            log.info(
                "mixerlab: job %s of study %s already finished: taken from the study's record, "
                "not trained (best %s %s)",
                run_dir.name,
                config["study"],
                monitor,
                shown,
            )
        else:
            log.info("mixerlab: %s already finished, skipped (best %s %s)", run_dir, monitor, shown)
        return record
    if changed:  # the budget, and what the config derives from it (the LR schedule's length)
        budget = [c for c in changed if _among(c[0], BUDGET_KEYS)]
        derived = ", ".join(key for key, *_ in changed if not _among(key, BUDGET_KEYS))
        log.info(
            "mixerlab: the run in %s goes on with another budget: %s; not the same as a run "
            "trained to this budget from scratch%s",
            run_dir,
            ", ".join(f"{key} {old!r} -> {new!r}" for key, old, new in budget),
            f" (whose {derived} would have been the new value from the start)" if derived else "",
        )
    return None


def check_run_dir(cfg: DictConfig | Mapping[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """Whether the (validated) config ``cfg`` may train into ``run_dir``; reads only.

    Returns the folder's record when it holds a run of this config (to skip or resume; its budget
    may differ, and with it what the config derives from the budget, e.g. the LR schedule's
    length), None for a new or empty folder and with ``overwrite``. Raises ConfigError for a
    folder that holds a run of another config, or whose config cannot be known (results.json
    unreadable, or absent beside checkpoints).
    """
    if cfg["overwrite"]:
        return None
    record = _record(run_dir)
    if record is None:
        return None
    old = record["config"]
    recorded = dict(flatten(old))
    budget = {key: recorded[key] for key in BUDGET_KEYS if key in recorded}
    differ = differences(old, _resolved(cfg, budget))  # as if given the recorded budget
    if differ:
        raise ConfigError(_refusal(run_dir, record, differ))
    return record


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` for every key whose values differ, in sorted key
    order, leaving out :data:`UNRECORDED_KEYS`; a key one side lacks has the value
    :data:`ABSENT` there. Lists are values: a changed element changes the whole list."""
    flat_old, flat_new = dict(flatten(old)), dict(flatten(new))
    return [
        (key, flat_old.get(key, ABSENT), flat_new.get(key, ABSENT))
        for key in sorted(flat_old.keys() | flat_new.keys())
        if not _among(key, UNRECORDED_KEYS)
        and flat_old.get(key, ABSENT) != flat_new.get(key, ABSENT)
    ]


def discard_run(run_dir: Path, ckpt_path: str | None = None) -> list[Path]:
    """Remove what a run wrote into ``run_dir`` (:data:`RUN_FILES` and the checkpoints), and only
    that: Hydra's files, the logs, the W&B runs and anything a user put there stay. Refuses
    (ConfigError) when ``ckpt_path``, the checkpoint the new run starts from, is one of them.
    Returns the removed paths."""
    ckpt_dir = run_dir / CHECKPOINT_DIR
    checkpoints = sorted(ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []
    if ckpt_path and any(Path(ckpt_path).resolve() == p.resolve() for p in checkpoints):
        raise ConfigError(
            f"ckpt_path={ckpt_path} is one of the checkpoints overwrite=true discards; "
            "copy it out of the run folder first, or start a new folder from it"
        )
    removed = [run_dir / name for name in RUN_FILES if (run_dir / name).is_file()]
    removed += checkpoints
    for path in removed:
        path.unlink()
    if ckpt_dir.is_dir() and not any(ckpt_dir.iterdir()):
        ckpt_dir.rmdir()
    if removed:
        names = ", ".join(str(p.relative_to(run_dir)) for p in removed)
        log.info("mixerlab: overwrite=true: discarded %s from %s", names, run_dir)
    return removed


def restart_from_scratch(run_dir: Path) -> dict[Path, bytes]:
    """Discard :data:`RUN_FILES` (the record, ``metrics.csv``) of an earlier run in ``run_dir``
    that this run cannot continue (no checkpoint of it here), and say so. Returns what was
    discarded, for :func:`restore_run_files` when the run does not start after all."""
    if rank_zero_only.rank != 0:  # DDP: rank 0 writes the run's files
        return {}
    saved = {run_dir / n: (run_dir / n).read_bytes() for n in RUN_FILES if (run_dir / n).is_file()}
    if not saved:
        return {}
    try:
        record = read_record(run_dir / RESULTS_FILE) if run_dir / RESULTS_FILE in saved else {}
    except (OSError, ValueError):
        record = {}
    status = record.get("status") if isinstance(record, dict) else None
    what = []
    if run_dir / RESULTS_FILE in saved:
        what.append(f"its {status or 'unreadable'} record at step {record.get('last_step', '?')}")
    if run_dir / HISTORY_FILE in saved:
        rows = max(saved[run_dir / HISTORY_FILE].count(b"\n") - 1, 0)
        what.append(f"{rows} row{'s' * (rows != 1)} of {HISTORY_FILE}")
    for path in saved:
        path.unlink()
    kind = "finished run here to train further" if status == "finished" else "unfinished run here"
    log.info(
        "mixerlab: no checkpoint of this %s: training it from the start (%s discarded) in %s",
        kind,
        " and ".join(what),
        run_dir,
    )
    return saved


def restore_run_files(saved: dict[Path, bytes]) -> None:
    """Put back what :func:`restart_from_scratch` discarded (a run stopped by a config error
    before it trained: the earlier run's files stand)."""
    for path, data in saved.items():
        write_atomic(path, data)


def _record(run_dir: Path) -> dict[str, Any] | None:
    """The folder's results.json with its config; None for a folder that holds no run."""
    path = run_dir / RESULTS_FILE
    if not path.exists():
        ckpt_dir = run_dir / CHECKPOINT_DIR
        if ckpt_dir.is_dir() and any(ckpt_dir.glob("*.ckpt")):
            raise ConfigError(
                f"run folder {run_dir} holds checkpoints but no {RESULTS_FILE}, which records "
                f"the config they were trained with, so they cannot be told to fit this one. {FIX}"
            )
        return None
    try:
        record = read_record(path)
    except (OSError, ValueError) as err:
        problem = f"cannot be read ({type(err).__name__}: {err})"
    else:
        if isinstance(record, dict) and isinstance(record.get("config"), dict):
            return record
        problem = "records no config"
    raise ConfigError(
        f"run folder {run_dir} holds a run whose config is unknown: {path} {problem}. {FIX}"
    )


def _resolved(
    cfg: DictConfig | Mapping[str, Any], budget: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``cfg`` validated as the run records it in results.json (through JSON, so that values
    compare alike), with the ``budget`` keys set first (so that what interpolates them follows).
    """
    node = OmegaConf.create(OmegaConf.to_container(cfg) if isinstance(cfg, DictConfig) else cfg)
    for key, value in (budget or {}).items():
        OmegaConf.update(node, key, value, merge=False)
    return json.loads(json.dumps(validate_config(node), default=str))


def _among(key: str, keys: tuple[str, ...]) -> bool:
    """``key`` is one of ``keys`` or inside one of them (``logger.mode`` is in ``logger``)."""
    return any(key == k or key.startswith(f"{k}.") for k in keys)


def _refusal(run_dir: Path, record: dict[str, Any], differ: list[tuple[str, Any, Any]]) -> str:
    shown = [f"  - {key}: {old!r} there, {new!r} now" for key, old, new in differ]
    if len(shown) > SHOWN_DIFFERENCES:
        shown[SHOWN_DIFFERENCES:] = [f"  ... and {len(shown) - SHOWN_DIFFERENCES} more"]
    status = record.get("status", "?")
    step = record.get("last_step", "?")
    return (
        f"run folder {run_dir} holds a run ({status}, step {step}) of another config; "
        f"{len(differ)} key{'s' * (len(differ) > 1)} differ:\n" + "\n".join(shown) + "\n"
        "Training into it would continue that run and report its metrics under this config. "
        f"Only {', '.join(BUDGET_KEYS)} may change, to train a run further. {FIX}"
    )


def launch_overrides(run_dir: Path) -> list[str]:
    """The overrides the run in ``run_dir`` was launched with (Hydra saves them in
    ``.hydra/overrides.yaml``), less ``overwrite=``: that was an instruction to that launch, and
    resuming must not empty the folder again. ConfigError for a folder Hydra did not make."""
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.exists():
        raise ConfigError(
            f"resume={run_dir}: {saved} not found; pass the directory of a run started by "
            "`mixerlab train` (it holds .hydra/ and checkpoints/)"
        )
    return [o for o in yaml.safe_load(saved.read_text()) if not o.startswith("overwrite=")]


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
