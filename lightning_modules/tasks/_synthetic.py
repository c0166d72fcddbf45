"""What every synthetic task shares: seed streams, parts, caching, dedup against training.

A synthetic task's examples come from seeded numpy code through
``datasets.Dataset.from_generator``, cached under a fingerprint of the task name, its generator
parameters, the seed, the split and the generator version. Every mixer therefore trains and is
evaluated on the very same examples, and a second run reads them back instead of regenerating.

Train and validation examples are drawn from disjoint seed streams (``SeedSequence`` spawn keys
``(0, part)`` for training and ``(1, set)`` for validation), and every validation example whose
input sequence also occurs in the training split is dropped: a validation accuracy never rewards
having memorised a training sequence. What every split must share (memorization's key-value map)
comes from a third stream, spawn key ``(2,)``: :meth:`SyntheticTaskDataModule.shared_rng`.

With ``fresh_every_epoch`` the training examples are drawn anew for every epoch, as Mamba trains
its synthetic tasks: epoch 0 is the cached training split, epoch e > 0 is drawn in memory from its
own seed stream (spawn key ``(0, part, e)``), so the examples depend on (seed, epoch) alone.
Those later epochs are not checked against the validation sets (a repeat is vanishingly rare
at the lengths Mamba's tasks use, where fresh data matter).

Token id 0 is padding; each task's own special tokens come next, then its ordinary tokens.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import datasets
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from mixerlab.lightning_modules.tasks._base import IGNORE_INDEX, PAD_ID, TaskDataModule
from mixerlab.lightning_modules.tasks._examples import FreshEpochs, PaddedExamples
from mixerlab.lightning_modules.tasks._loading import (
    build_loader,
    cached_dataset,
    check_non_negative,
    check_positive,
    default_cache_dir,
    pad_collate,
    seq2seq_collate,
)
from mixerlab.lightning_modules.tasks._resumable import EpochShuffle

log = logging.getLogger(__name__)

TRAIN_STREAM, VAL_STREAM, SHARED_STREAM = 0, 1, 2
# Rows drawn per numpy call: bounds memory (MQAR draws a (rows, vocab/2) matrix for the keys).
CHUNK_ROWS = 1024


def _offsets_and_values(column: Any) -> tuple[np.ndarray, np.ndarray]:
    """An Arrow list column as row offsets (from 0, even for a sliced column) and flat values."""
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy()
    return offsets - offsets[0], array.flatten().to_numpy()


def _column_to_padded(column: Any, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """An Arrow list column as a right-padded (rows, longest) int64 array and the row lengths."""
    offsets, values = _offsets_and_values(column)
    lengths = np.diff(offsets)
    out = np.full((len(lengths), int(lengths.max())), pad, dtype=np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    out[rows, np.arange(len(values)) - offsets[:-1][rows]] = values
    return out, lengths


def _row_hashes(column: Any) -> set[int]:
    """Hashes of the rows of an int32 Arrow list column, for dropping train inputs from val."""
    offsets, values = _offsets_and_values(column)
    values = values.astype(np.int32, copy=False)
    return {hash(values[a:b].tobytes()) for a, b in itertools.pairwise(offsets)}


def _to_lists(rows: np.ndarray | Sequence[np.ndarray]) -> list:
    """An array, or a list of 1-d arrays, as (nested) Python lists."""
    return rows.tolist() if isinstance(rows, np.ndarray) else [row.tolist() for row in rows]


def sample_distinct(rng: np.random.Generator, n: int, population: int, k: int) -> np.ndarray:
    """(n, k) draws without replacement from ``range(population)``, in uniformly random order.

    The indices of the k smallest of ``population`` uniforms form a uniform k-subset, and
    ordering them by their uniforms gives a uniformly random order (exchangeability).
    """
    noise = rng.random((n, population), dtype=np.float32)
    picked = np.argpartition(noise, k - 1, axis=1)[:, :k]
    order = np.argsort(np.take_along_axis(noise, picked, axis=1), axis=1)
    return np.take_along_axis(picked, order, axis=1)


@dataclass(frozen=True)
class Part:
    """``n_examples`` examples drawn with one setting of a task's per-part generator arguments."""

    name: str
    n_examples: int
    settings: dict[str, int] = field(default_factory=dict)


class SyntheticTaskDataModule(TaskDataModule, ABC):
    """Seeded generation, caching, dedup, loaders and padding for a registered synthetic task.

    A subclass implements :meth:`generate` and passes its parameters and parts to ``__init__``
    (and bumps ``generator_version`` when its output changes). The training split is the
    concatenation of ``train_parts`` (mixed in each batch by shuffling); every entry of
    ``val_parts`` is a separate validation set, named by its ``Part.name`` (``"val"`` when there
    is only one). ``fresh_every_epoch`` draws new training examples for every epoch (see the
    module docstring); validation sets stay fixed.
    """

    # Bump when a generator's output changes for the same parameters: it is in the fingerprint.
    generator_version: ClassVar[int] = 1

    def __init__(
        self,
        *,
        params: Mapping[str, Any],
        train_parts: Sequence[Part],
        val_parts: Sequence[Part],
        vocab_size: int,
        max_len: int,
        num_classes: int | None = None,
        batch_size: int,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
        fresh_every_epoch: bool = False,
    ) -> None:
        super().__init__()
        check_positive(batch_size=batch_size, vocab_size=vocab_size, max_len=max_len)
        check_non_negative(seed=seed, num_workers=num_workers)
        if not train_parts or not val_parts:
            raise ValueError(f"{self.name} needs at least one training and one validation set")
        for part in (*train_parts, *val_parts):
            check_positive(**{f"n_examples of {part.name}": part.n_examples})
        names = [part.name for part in val_parts]
        if len(set(names)) != len(names):
            raise ValueError(f"validation sets must differ, got {names}; remove the duplicates")
        self.params = dict(params)
        self.train_parts = list(train_parts)
        self.val_parts = list(val_parts)
        self.vocab_size = int(vocab_size)
        self.max_len = int(max_len)
        self.num_classes = num_classes
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.cache_dir = str(cache_dir or default_cache_dir())
        self.val_set_names = ["val"] if len(val_parts) == 1 else names
        self.fresh_every_epoch = bool(fresh_every_epoch)

        self._train_fingerprint = self._split_fingerprint("train", self.train_parts)
        self._val_fingerprints = [
            self._split_fingerprint("val", [part], train=self._train_fingerprint)
            for part in self.val_parts
        ]
        self.fingerprint = {
            "task": self.name,
            "seed": str(self.seed),
            "generator_version": str(self.generator_version),
            "params": json.dumps(self.params, sort_keys=True),
            "train": self._train_fingerprint,
            **{
                f"val@{name}": fp
                for name, fp in zip(self.val_set_names, self._val_fingerprints, strict=True)
            },
            # only when on: a run with fixed training data keeps the fingerprint it always had
            **({"fresh_every_epoch": "true"} if self.fresh_every_epoch else {}),
        }
        self.train_dataset: datasets.Dataset | None = None
        self.val_datasets: dict[str, datasets.Dataset] = {}
        self._train: PaddedExamples | None = None
        self._vals: list[PaddedExamples] = []
        self._train_hashes: set[int] | None = None

    # -- generation ---------------------------------------------------------------------------

    @abstractmethod
    def generate(
        self, rng: np.random.Generator, n: int, **settings: int
    ) -> tuple[Sequence[np.ndarray], np.ndarray]:
        """Draw ``n`` examples as ``(inputs, targets)``.

        ``inputs`` is an (n, L) array or a list of n 1-d arrays (variable length). ``targets``
        has the inputs' shape (per-position, -100 where unscored) for "lm" tasks, is an (n,)
        label array for "classification", and for "seq2seq" holds each input's target sequence
        (any length, ending in ``EOS_ID``).
        """

    def shared_rng(self) -> np.random.Generator:
        """A generator for what every split shares (memorization's facts), seeded from the run's
        seed alone and apart from the training and validation streams; the same on every call."""
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(SHARED_STREAM,)))

    def _split_fingerprint(self, split: str, parts: Sequence[Part], train: str = "") -> str:
        payload = {
            "task": self.name,
            "generator_version": self.generator_version,
            "seed": self.seed,
            "params": self.params,
            "split": split,
            "parts": [asdict(part) for part in parts],
            "train": train,  # validation sets depend on the training split (dedup)
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def _features(self) -> datasets.Features:
        target = (
            datasets.Value("int32")
            if self.task_type == "classification"
            else datasets.List(datasets.Value("int32"))
        )
        return datasets.Features(
            {"input": datasets.List(datasets.Value("int32")), "target": target}
        )

    def _examples(
        self, parts: tuple[Part, ...], spawn_keys: tuple[tuple[int, int], ...], dedup: bool
    ) -> Iterator[dict]:
        """Yield the examples of ``parts``, each drawn from the seed stream of its spawn key.

        With ``dedup``, inputs that occur in the training split are skipped.
        """
        seen = self._train_input_hashes() if dedup else set()
        for part, spawn_key in zip(parts, spawn_keys, strict=True):
            rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=spawn_key))
            kept = 0
            for start in range(0, part.n_examples, CHUNK_ROWS):
                n = min(CHUNK_ROWS, part.n_examples - start)
                inputs, targets = self.generate(rng, n, **part.settings)
                rows = [np.asarray(x, dtype=np.int32) for x in inputs]
                # Python lists: datasets encodes them about twice as fast as numpy rows.
                for x, y in zip(rows, _to_lists(targets), strict=True):
                    if dedup and hash(x.tobytes()) in seen:
                        continue
                    kept += 1
                    yield {"input": x.tolist(), "target": y}
            if kept == 0:
                raise ValueError(
                    f"{self.name} {part.name!r}: every example also occurs in the training "
                    "split, so the set would be empty; use a larger vocabulary or longer sequences"
                )
            if kept < part.n_examples:
                dropped = part.n_examples - kept
                log.info(
                    "%s %s: dropped %d examples seen in training", self.name, part.name, dropped
                )

    def _build(
        self, fingerprint: str, parts: list[Part], spawn_keys: list[tuple[int, int]], dedup: bool
    ) -> datasets.Dataset:
        return cached_dataset(
            self._examples,
            cache_dir=self.cache_dir,
            fingerprint=f"{self.name}-{fingerprint}",
            features=self._features(),
            # Tuples, not lists: datasets would take lists for shards and split them.
            gen_kwargs={"parts": tuple(parts), "spawn_keys": tuple(spawn_keys), "dedup": dedup},
        )

    def _train_input_hashes(self) -> set[int]:
        if self._train_hashes is None:
            if self.train_dataset is None:
                raise RuntimeError("the training split must be built before the validation sets")
            self._train_hashes = _row_hashes(self.train_dataset.data.column("input"))
        return self._train_hashes

    def _build_datasets(self) -> None:
        if self.train_dataset is not None:
            return
        self.train_dataset = self._build(
            self._train_fingerprint,
            self.train_parts,
            [(TRAIN_STREAM, index) for index in range(len(self.train_parts))],
            dedup=False,
        )
        for index, (name, part, fp) in enumerate(
            zip(self.val_set_names, self.val_parts, self._val_fingerprints, strict=True)
        ):
            self.val_datasets[name] = self._build(fp, [part], [(VAL_STREAM, index)], dedup=True)

    # -- LightningDataModule ------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Generate and cache every split (a no-op when the cache already holds them)."""
        self._build_datasets()

    def setup(self, stage: str | None = None) -> None:
        if self._train is not None:
            return
        self._build_datasets()
        assert self.train_dataset is not None
        self._train = self._to_tensors(self.train_dataset)
        self._vals = [self._to_tensors(self.val_datasets[name]) for name in self.val_set_names]

    def _to_tensors(self, ds: datasets.Dataset) -> PaddedExamples:
        inputs, lengths = _column_to_padded(ds.data.column("input"), PAD_ID)
        if self.task_type == "classification":
            targets = ds.data.column("target").to_numpy().astype(np.int64)
            target_lengths = lengths
        else:
            targets, target_lengths = _column_to_padded(ds.data.column("target"), IGNORE_INDEX)
        return PaddedExamples(
            torch.from_numpy(inputs),
            torch.from_numpy(targets),
            torch.from_numpy(lengths),
            torch.from_numpy(target_lengths),
        )

    @property
    def collate(self) -> Callable[[Sequence[tuple[Tensor, Tensor]]], dict[str, Tensor]]:
        """How the task's examples become batches: a seq2seq task's carry a source."""
        return seq2seq_collate if self.task_type == "seq2seq" else pad_collate

    def _loader(self, examples: PaddedExamples | None, shuffle: bool) -> DataLoader:
        if examples is None:
            raise RuntimeError(f"call setup() on the {self.name} data module before loading")
        return build_loader(
            examples,
            batch_size=self.batch_size,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            shuffle_seed=self.seed if shuffle else None,
        )

    def _draw_epoch(self, epoch: int) -> PaddedExamples:
        """The training examples of ``epoch`` > 0, drawn in memory (``fresh_every_epoch``)."""
        keys = tuple((TRAIN_STREAM, index, epoch) for index in range(len(self.train_parts)))
        rows = list(self._examples(tuple(self.train_parts), keys, dedup=False))
        return self._to_tensors(datasets.Dataset.from_list(rows, features=self._features()))

    def train_dataloader(self) -> DataLoader:
        if not self.fresh_every_epoch:
            return self._loader(self._train, shuffle=True)
        assert self._train is not None
        return build_loader(
            FreshEpochs(self._train, self._draw_epoch),
            batch_size=self.batch_size,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            # the fixed split's order, each index keyed by its epoch
            sampler=EpochShuffle(self._train, self.seed, keyed=True),
        )

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        if not self._vals:
            return self._loader(None, shuffle=False)
        loaders = [self._loader(examples, shuffle=False) for examples in self._vals]
        return loaders[0] if len(loaders) == 1 else loaders
