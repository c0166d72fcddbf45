"""Checkpoint I/O: the one way mixerlab reads a checkpoint (tensors only, from files and URLs
alike) and the Lightning plugin every save and restore of a run goes through."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import fsspec
import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from mixerlab.lightning_modules.record import write_atomic

# What a Lightning checkpoint holds whatever saved it: the model's weights and the step.
CHECKPOINT_KEYS = ("state_dict", "global_step")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, damaged, not a checkpoint, or holding code."""


def is_url(path: str | Path) -> bool:
    """``scheme://...`` (http, https, s3, gs, ... : anything fsspec opens), not a local path."""
    return "://" in str(path)


def download(url: str, dest: Path) -> Path:
    """Copy the file at ``url`` to ``dest`` (through a temporary file: a broken download leaves
    nothing behind that looks complete); CheckpointError when it cannot be fetched."""
    try:
        with fsspec.open(url, "rb") as src:
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            with tmp.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except Exception as err:  # fsspec's errors differ by protocol (HTTP, S3, ...)
        raise CheckpointError(f"{url}: cannot be downloaded: {type(err).__name__}: {err}") from None
    os.replace(tmp, dest)
    return dest


def load_checkpoint(path: str | Path, *, source: str | None = None) -> dict[str, Any]:
    """Load a local checkpoint file, tensors and plain containers only.

    Every checkpoint mixerlab reads goes through here (resuming, ``ckpt_path``, Lightning's own
    restore through :class:`SafeCheckpointIO`): ``torch.load`` with ``weights_only=True`` never
    runs code a file carries, where a full unpickle would run whatever the file's author put in
    it. A URL is first copied to a local file by the caller (:func:`download`), so remote files
    get the same treatment; ``source`` (the URL) is then what the messages name.

    Raises CheckpointError naming the file: missing, refused (a pickle the tensors-only reader
    cannot take: Python objects, which only a full unpickle, running code, could build; or not
    a pickle at all), unreadable (truncated or damaged torch file), or not a Lightning
    checkpoint (no ``state_dict``/``global_step``).
    """
    path = Path(path)
    name = source or str(path)
    if not path.is_file():
        raise CheckpointError(f"{name}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol it reads anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{name}: refused: not a file of tensors and plain containers ({_reason(err)}); "
            "loading it in full could run code it carries, so mixerlab does not"
        ) from None
    except Exception as err:  # torch reports a damaged file as RuntimeError, EOFError, KeyError...
        raise CheckpointError(
            f"{name}: not a readable checkpoint (truncated, damaged or not a torch file): "
            f"{_reason(err)}"
        ) from None
    missing = [
        key for key in CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint
    ]
    if missing:
        raise CheckpointError(
            f"{name}: a torch file but not a Lightning checkpoint (no {', '.join(missing)})"
        )
    return checkpoint


def _reason(err: Exception) -> str:
    """The telling part of torch's error: its weights-only messages run to a dozen lines of
    advice around one line that says what was found."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    found = next((line for line in lines if line.startswith(("Unsupported", "GLOBAL"))), None)
    line = found or (lines[0] if lines else "")
    return f"{type(err).__name__}: {line.split('. ')[0]}" if line else type(err).__name__


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, made safe both ways: restoring reads tensors only (through
    :func:`load_checkpoint`, never a full unpickle), and saving replaces the file atomically, so a
    run killed while saving leaves the previous checkpoint whole.

    ``preloaded`` maps paths to checkpoints the run has already loaded and checked before
    ``fit`` (the run's start guard); Lightning's restore takes them from there instead of
    reading the file again.
    """

    def __init__(self, preloaded: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.preloaded = dict(preloaded or {})

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return self.preloaded.pop(str(path), None) or load_checkpoint(path)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(path), buffer.getvalue())
