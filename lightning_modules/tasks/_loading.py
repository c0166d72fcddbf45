"""What every task shares to get its examples to the model: the fingerprinted dataset cache,
the argument checks, padding and the DataLoader.

Token id 0 is padding in every task: batches are right-padded, ``mask`` is False there and
per-position targets are -100 (never scored).

The cache is checked before it is used. When ``datasets`` has built a dataset, the size and
sha256 digest of each of its files go into ``mixerlab-checksums.json`` beside them (written
atomically); every later load compares sizes, hashes the files again and rebuilds the dataset,
saying which file and why, when one differs, is missing or cannot be read, or when the record
itself is missing or unreadable. A cache from before the record existed is therefore rebuilt once
rather than adopted: its bytes were never vouched for, and generation is seeded, so an intact old
cache and its rebuild hold the same examples. Every byte is hashed on every load, with no
size+mtime shortcut: an edit that keeps both would pass it, and the full check is cheap next to a
run's start-up (on two busy CPU cores: the default text task's 117 MiB in 0.11-0.23 s, mqar's
17 MiB in 17-37 ms, against 25 s to import the training stack). sha256 rather than blake2b
because CPUs hash it in hardware (SHA-NI, ARMv8): 1.36 GB/s against 0.54 on the same core.
Checking, rebuilding and recording happen under a per-dataset file lock, so runs that share a
cache take turns and never remove files another run is building or checking.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets.exceptions import DatasetGenerationError
from filelock import FileLock
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

from mixerlab.lightning_modules.record import write_atomic
from mixerlab.lightning_modules.tasks._base import BOS_ID, IGNORE_INDEX, PAD_ID, TaskDataModule
from mixerlab.lightning_modules.tasks._resumable import EpochShuffle, ResumableLoader

log = logging.getLogger(__name__)

CHECKSUMS = "mixerlab-checksums.json"
HASH_BLOCK = 1 << 20  # bytes read per hash update


def default_cache_dir() -> str:
    """``$MIXERLAB_CACHE`` or ``~/.cache/mixerlab``: where generated datasets are kept."""
    return os.environ.get("MIXERLAB_CACHE") or str(Path.home() / ".cache" / "mixerlab")


def _generator_folder(cache_dir: str | os.PathLike, fingerprint: str) -> Path:
    """Where ``Dataset.from_generator`` keeps the dataset of ``fingerprint`` (``datasets``'
    layout; :func:`cached_dataset` refuses to go on if a build lands anywhere else)."""
    return (
        Path(cache_dir) / "datasets" / "generator" / f"default-fingerprint={fingerprint}" / "0.0.0"
    )


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _file_checksums(folder: Path) -> dict[str, list]:
    """``{file name: [size in bytes, sha256 hex digest]}`` of the dataset files in ``folder``."""
    return {
        path.name: [path.stat().st_size, _digest(path)]
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != CHECKSUMS and not path.name.startswith(".")
    }


def _cache_damage(folder: Path) -> str | None:
    """Why the cached dataset in ``folder`` cannot be used, naming the file, or None when every
    file matches its recorded size and digest. Sizes are compared first: a truncated file is
    caught without hashing."""
    record = folder / CHECKSUMS
    try:
        expected = json.loads(record.read_text())
    except FileNotFoundError:
        return f"{record} is missing (an older mixerlab's cache, or a build cut short)"
    except (OSError, ValueError) as err:
        return f"{record} cannot be read ({err})"
    if not isinstance(expected, dict) or not all(
        isinstance(entry, list) and len(entry) == 2 for entry in expected.values()
    ):
        return f"{record} is not a checksum record"
    try:
        for name, (size, _) in expected.items():
            if (found := (folder / name).stat().st_size) != size:
                return f"{folder / name} has {found} bytes, its checksum record says {size}"
        for name, (_, digest) in expected.items():
            if _digest(folder / name) != digest:
                return f"{folder / name} does not match its checksum"
    except OSError as err:
        return f"{err.filename} cannot be read ({err.strerror})"
    return None


def cached_dataset(
    generator: Callable[..., Any], *, cache_dir: str | os.PathLike, fingerprint: str, **kwargs: Any
) -> datasets.Dataset:
    """``Dataset.from_generator`` under an explicit ``fingerprint`` in ``<cache_dir>/datasets``:
    built once, checked against its checksums on every load (rebuilt when damaged, see the
    module docstring), then memory-mapped. ``kwargs`` go to ``from_generator`` (features,
    gen_kwargs, split). A ValueError the generator raises (a bad-input message of ours) is
    re-raised as is rather than wrapped in the library's DatasetGenerationError."""
    folder = _generator_folder(cache_dir, fingerprint)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(folder.parent / "mixerlab.lock"):
        if folder.exists() and (damage := _cache_damage(folder)):
            log.warning("cached dataset: %s; rebuilding it", damage)
            shutil.rmtree(folder)
        build = not folder.exists()
        try:
            dataset = datasets.Dataset.from_generator(
                generator,
                cache_dir=str(Path(cache_dir) / "datasets"),
                fingerprint=fingerprint,
                **kwargs,
            )
        except DatasetGenerationError as err:
            if isinstance(err.__cause__, ValueError):
                raise err.__cause__ from None
            raise
        if build:
            built_in = {Path(entry["filename"]).parent.resolve() for entry in dataset.cache_files}
            if built_in != {folder.resolve()}:
                raise RuntimeError(
                    f"datasets {datasets.__version__} wrote the dataset to {sorted(built_in)}, "
                    f"not {folder} where mixerlab checks it; pin the datasets version mixerlab "
                    "was tested with"
                )
            write_atomic(folder / CHECKSUMS, json.dumps(_file_checksums(folder), indent=1))
    return dataset


def _check_at_least(minimum: int, what: str, values: dict[str, Any]) -> None:
    for name, value in values.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name} must be a {what} integer, got {value!r}")


def check_positive(**values: Any) -> None:
    """Raise a ValueError naming the first argument that is not an integer >= 1."""
    _check_at_least(1, "positive", values)


def check_non_negative(**values: Any) -> None:
    """Raise a ValueError naming the first argument that is not an integer >= 0."""
    _check_at_least(0, "non-negative", values)


def pad_collate(examples: Sequence[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """Right-pad a list of ``(input, target)`` examples into a batch dict.

    Inputs are padded with ``PAD_ID``, per-position targets with -100; a 0-d target is a
    sequence label and is stacked. ``mask`` is True at real tokens.
    """
    inputs = [x for x, _ in examples]
    lengths = torch.tensor([len(x) for x in inputs])
    batch_input = pad_sequence(inputs, batch_first=True, padding_value=PAD_ID)
    mask = torch.arange(batch_input.shape[1]) < lengths[:, None]
    targets = [y for _, y in examples]
    if targets[0].dim() == 0:
        batch_target = torch.stack(targets)
    else:
        batch_target = pad_sequence(targets, batch_first=True, padding_value=IGNORE_INDEX)
    return {"input": batch_input, "target": batch_target, "mask": mask}


def seq2seq_batch(
    sources: Sequence[Tensor], targets: Sequence[Tensor], start_id: int
) -> dict[str, Tensor]:
    """Right-pad sources and targets (each ending in its end token) into a seq2seq batch:
    ``source`` and ``source_mask`` as :func:`pad_collate` pads inputs, ``target`` padded with
    -100, and the decoder's ``input``, the target shifted right after ``start_id`` (teacher
    forcing), with its ``mask``."""
    inputs = [torch.cat([target.new_full((1,), start_id), target[:-1]]) for target in targets]
    source = pad_sequence(list(sources), batch_first=True, padding_value=PAD_ID)
    decoder_input = pad_sequence(inputs, batch_first=True, padding_value=PAD_ID)
    source_lengths = torch.tensor([len(s) for s in sources])
    target_lengths = torch.tensor([len(t) for t in targets])
    return {
        "source": source,
        "source_mask": torch.arange(source.shape[1]) < source_lengths[:, None],
        "input": decoder_input,
        "target": pad_sequence(list(targets), batch_first=True, padding_value=IGNORE_INDEX),
        "mask": torch.arange(decoder_input.shape[1]) < target_lengths[:, None],
    }


def seq2seq_collate(examples: Sequence[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """:func:`seq2seq_batch` of ``(source, target)`` examples, the decoder started by
    ``BOS_ID``."""
    return seq2seq_batch([s for s, _ in examples], [t for _, t in examples], BOS_ID)


def build_loader(
    examples: TorchDataset,
    *,
    batch_size: int,
    collate_fn: Callable[[Any], dict[str, Tensor]],
    num_workers: int,
    shuffle_seed: int | None = None,
    sampler: Sampler | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A task's DataLoader: in the order :class:`EpochShuffle` draws from ``shuffle_seed`` and
    the epoch when a seed is given (training: the same order on every machine), in the order of
    ``sampler`` when one is given (a task that draws its own order), in order otherwise. A
    loader whose order is an EpochShuffle (keyed or not) is a :class:`ResumableLoader`: a run
    resumed mid-epoch goes on with the batch it would have taken next."""
    if shuffle_seed is not None:
        if sampler is not None:
            raise ValueError("build_loader takes shuffle_seed or sampler, not both")
        sampler = EpochShuffle(examples, shuffle_seed)
    shuffle = sampler if isinstance(sampler, EpochShuffle) else None
    return (DataLoader if shuffle is None else ResumableLoader)(
        examples,
        batch_size=batch_size,
        drop_last=drop_last,
        sampler=sampler,
        # its own generator: a new iterator draws its workers' seed from it, not from the
        # global generator dropout draws from
        generator=None if shuffle is None else torch.Generator().manual_seed(shuffle.seed),
        collate_fn=collate_fn,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def measure_loader_throughput(dm: TaskDataModule, n_batches: int) -> float:
    """Real input tokens/s of the train loader alone, after its first batch (worker start-up
    excluded); the loader restarts when it runs out."""
    loader = dm.train_dataloader()
    batches = iter(loader)
    next(batches)
    tokens = 0
    start = time.perf_counter()
    for _ in range(n_batches):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        tokens += int(batch["mask"].sum())
    return tokens / (time.perf_counter() - start)
