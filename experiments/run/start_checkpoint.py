"""The checkpoint a run starts from, loaded and checked before any training
(``mixerlab.experiments.run.train`` calls these).

A run starts from ``ckpt_path`` (a file or a URL) or, when its folder holds
checkpoints, resumes from the newest one that loads. Either way the file is loaded here, tensors
only (:func:`mixerlab.lightning_modules.checkpoints.load_checkpoint`; a URL is first downloaded to a
temporary file), and handed to Lightning through
:class:`~mixerlab.lightning_modules.checkpoints.SafeCheckpointIO`, so it is read once and never
unpickled in full. A ``ckpt_path`` that is not a usable checkpoint is a config error (exit 2) found
before any work; a damaged ``last.ckpt`` (a run killed while an older mixerlab was writing it, a
full disk) makes the run fall back to the newest checkpoint that loads, and say so, or stop with the
reason for each file, before results.json is touched.

Budget. A checkpoint already past ``trainer.max_steps`` (a finished run re-run with a smaller
budget) is refused by :func:`check_budget`: Lightning would train nothing and the run would
report the checkpoint's metrics under a budget it never had, and one whose weights do not fit
the model by :func:`check_checkpoint_fits`.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from mixerlab.experiments.run.schema import FIT_CKPT_NAMES, ConfigError
from mixerlab.lightning_modules.checkpoints import (
    CheckpointError,
    download,
    is_url,
    load_checkpoint,
)
from mixerlab.lightning_modules.record import CHECKPOINT_DIR

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Start:
    """Where ``Trainer.fit`` starts: ``path`` (None: from scratch) and, once loaded and checked
    here, its ``checkpoint`` (None for a name Lightning resolves itself, e.g. ``last``)."""

    path: str | None = None
    checkpoint: dict[str, Any] | None = None
    source: str | None = None  # what the user gave (a URL), for messages

    @property
    def continues_folder(self) -> bool:
        """Whether the run goes on from a checkpoint of its own folder (not from scratch, nor from
        a ``ckpt_path``): only then are the folder's record and ``metrics.csv`` its own."""
        return self.path is not None and self.source is None

    def preloaded(self) -> dict[str, dict[str, Any]]:
        """For :class:`~mixerlab.lightning_modules.checkpoints.SafeCheckpointIO`: the loaded
        checkpoint."""
        return {self.path: self.checkpoint} if self.path and self.checkpoint else {}


@contextlib.contextmanager
def start_checkpoint(config: dict[str, Any], run_dir: Path) -> Iterator[Start]:
    """The checkpoint the run starts from, loaded and checked; a URL's download lives in a
    temporary folder until the ``with`` block ends. A run folder that holds checkpoints resumes
    from them, ``ckpt_path`` or not: it only says where the run began (its first launch).
    Raises ConfigError for a ``ckpt_path`` that is not a usable checkpoint and for a run folder
    none of whose checkpoints loads."""
    given = config["ckpt_path"]
    if given is not None and not is_url(given) and given.split(":")[0] in FIT_CKPT_NAMES:
        yield Start(given)  # Lightning resolves the name; it loads through SafeCheckpointIO
        return
    resumed = _resume_point(run_dir)
    if given is None or resumed.path:
        yield resumed
        return
    with tempfile.TemporaryDirectory(prefix="mixerlab-ckpt-") as tmp:
        try:
            local = download(given, Path(tmp) / "start.ckpt") if is_url(given) else Path(given)
            checkpoint = load_checkpoint(local, source=given)
        except CheckpointError as err:
            raise ConfigError(f"ckpt_path: {err}") from None
        yield Start(str(local), checkpoint, given)


def check_budget(start: Start, config: dict[str, Any]) -> None:
    """Refuse a checkpoint already past the run's budget: Lightning would train no step and the
    run would report the checkpoint's metrics under a budget it never had."""
    max_steps = config["trainer"]["max_steps"]
    step = start.checkpoint["global_step"] if start.checkpoint else 0
    if step > max_steps:
        raise ConfigError(
            f"trainer.max_steps={max_steps}, but checkpoint {start.source or start.path} has "
            f"already trained {step} steps; give trainer.max_steps >= {step} (to train a run "
            "further), or train a shorter run afresh: a new folder, or overwrite=true"
        )


def _resume_point(run_dir: Path) -> Start:
    """The newest checkpoint in the run's folder that loads (``last.ckpt`` unless it is
    damaged); nothing when the folder has none."""
    ckpt_dir = run_dir / CHECKPOINT_DIR
    candidates = sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    unreadable: list[str] = []
    for path in candidates:
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as err:
            unreadable.append(str(err))
            continue
        if unreadable:
            log.warning(
                "mixerlab: %s\nmixerlab: resuming from %s instead (step %d)",
                "\n".join(unreadable),
                path,
                checkpoint["global_step"],
            )
        return Start(str(path), checkpoint)
    if unreadable:
        listing = "\n".join(f"  - {problem}" for problem in unreadable)
        raise ConfigError(
            f"cannot resume {run_dir}: none of its checkpoints loads:\n{listing}\n"
            "Its results.json is left as it was; to train this config afresh, move the run "
            "folder away (or give a new hydra.run.dir)."
        )
    return Start()


def check_checkpoint_fits(start: Start, module: pl.LightningModule) -> None:
    """The checkpoint's weights have this model's names and shapes; otherwise it was saved by a
    run with another model, mixer or task, and ``load_state_dict`` would fail with a traceback
    after the run started."""
    if start.checkpoint is None:
        return
    theirs, ours = start.checkpoint["state_dict"], module.state_dict()
    differ = sorted(ours.keys() ^ theirs.keys())
    differ += sorted(k for k in ours.keys() & theirs.keys() if ours[k].shape != theirs[k].shape)
    if not differ:
        return
    key = differ[0]
    shapes = [tuple(sd[key].shape) if key in sd else "absent" for sd in (theirs, ours)]
    raise ConfigError(
        f"checkpoint {start.source or start.path} does not fit this model: {len(differ)} "
        f"weight(s) differ, e.g. {key}: {shapes[0]} in the checkpoint, {shapes[1]} here; it was "
        "saved by a run with another model, mixer or task config"
    )
