"""What every task shares to get its examples to the model: the fingerprinted dataset cache,
the argument checks, padding and the DataLoader.

Token id 0 is padding in every task: batches are right-padded, ``mask`` is False there and
per-position targets are -100 (never scored).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets.exceptions import DatasetGenerationError
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from lightning_modules.tasks.base import TaskDataModule

PAD_ID = 0
IGNORE_INDEX = -100


def default_cache_dir() -> str:
    """``$MIXERLAB_CACHE`` or ``~/.cache/mixerlab``: where generated datasets are kept."""
    return os.environ.get("MIXERLAB_CACHE") or str(Path.home() / ".cache" / "mixerlab")


def cached_dataset(
    generator: Callable[..., Any], *, cache_dir: str | os.PathLike, fingerprint: str, **kwargs: Any
) -> datasets.Dataset:
    """``Dataset.from_generator`` under an explicit ``fingerprint`` in ``<cache_dir>/datasets``:
    built once, then memory-mapped. ``kwargs`` go to ``from_generator`` (features, gen_kwargs,
    split). A ValueError the generator raises (a bad-input message of ours) is re-raised as is
    rather than wrapped in the library's DatasetGenerationError."""
    try:
        return datasets.Dataset.from_generator(
            generator,
            cache_dir=str(Path(cache_dir) / "datasets"),
            fingerprint=fingerprint,
            **kwargs,
        )
    except DatasetGenerationError as err:
        if isinstance(err.__cause__, ValueError):
            raise err.__cause__ from None
        raise


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


def build_loader(
    examples: TorchDataset,
    *,
    batch_size: int,
    collate_fn: Callable[[Any], dict[str, Tensor]],
    num_workers: int,
    shuffle_seed: int | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A task's DataLoader: shuffled by a generator seeded with ``shuffle_seed`` when one is
    given (training; the same seed gives the same order on every machine), in order otherwise."""
    shuffle = shuffle_seed is not None
    return DataLoader(
        examples,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(shuffle_seed) if shuffle else None,
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
