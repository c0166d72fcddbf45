"""Synthetic token-mixing tasks: MQAR, selective copying, induction heads and ListOps.

Each task is a LightningDataModule whose examples come from seeded numpy code through
``datasets.Dataset.from_generator``, cached under a fingerprint of the task name, its generator
parameters, the seed, the split and the generator version. Every mixer therefore trains and is
evaluated on the very same examples, and a second run reads them back instead of regenerating.

Train and validation examples are drawn from disjoint seed streams (``SeedSequence`` spawn keys
``(0, part)`` for training and ``(1, set)`` for validation), and every validation example whose
input sequence also occurs in the training split is dropped: a validation accuracy never rewards
having memorised a training sequence.

Token id 0 is padding in every task (batches are right-padded, ``mask`` False there, targets
-100); each task's own special tokens come next, then its ordinary tokens.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import datasets
import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from lightning_modules.storage import cached_dataset, default_cache_dir

log = logging.getLogger(__name__)

PAD_ID = 0
IGNORE_INDEX = -100
TRAIN_STREAM, VAL_STREAM = 0, 1
# Rows drawn per numpy call: bounds memory (MQAR draws a (rows, vocab/2) matrix for the keys).
CHUNK_ROWS = 1024


def pad_collate(examples: Sequence[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """Right-pad a list of ``(input, target)`` examples into a batch dict.

    Inputs are padded with ``PAD_ID``, per-position targets with -100 (never scored); a 0-d
    target is a sequence label and is stacked. ``mask`` is True at real tokens.
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


class PaddedExamples(TorchDataset):
    """A split held in memory as right-padded tensors; items are the unpadded examples."""

    def __init__(self, inputs: Tensor, targets: Tensor, lengths: Tensor) -> None:
        self.inputs, self.targets, self.lengths = inputs, targets, lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        n = int(self.lengths[index])
        target = self.targets[index, :n] if self.targets.dim() == 2 else self.targets[index]
        return self.inputs[index, :n], target


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


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class Part:
    """``n_examples`` examples drawn with one setting of a task's per-part generator arguments."""

    name: str
    n_examples: int
    settings: dict[str, int] = field(default_factory=dict)


class SyntheticTaskDataModule(pl.LightningDataModule, ABC):
    """What every synthetic task shares: seeded generation, caching, dedup, loaders, padding.

    A subclass sets ``task_name`` (and ``task_type``/``generator_version`` where needed),
    implements :meth:`generate` and passes its parameters and parts to ``__init__``. The training
    split is the concatenation of ``train_parts`` (mixed in each batch by shuffling); every
    entry of ``val_parts`` is a separate validation set, named by its ``Part.name`` (``"val"``
    when there is only one).
    """

    task_name: ClassVar[str]
    task_type: ClassVar[str] = "lm"
    # Bump when a generator's output changes for the same parameters: it is in the fingerprint.
    generator_version: ClassVar[int] = 1
    bytes_per_token: float | None = None

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
    ) -> None:
        super().__init__()
        _check_positive(batch_size=batch_size, vocab_size=vocab_size, max_len=max_len)
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not train_parts or not val_parts:
            raise ValueError(f"{self.task_name} needs at least one training and one validation set")
        for part in (*train_parts, *val_parts):
            _check_positive(**{f"n_examples of {part.name}": part.n_examples})
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

        self._train_fingerprint = self._split_fingerprint("train", self.train_parts)
        self._val_fingerprints = [
            self._split_fingerprint("val", [part], train=self._train_fingerprint)
            for part in self.val_parts
        ]
        self.fingerprint: dict[str, str] = {
            "task": self.task_name,
            "seed": str(self.seed),
            "generator_version": str(self.generator_version),
            "params": json.dumps(self.params, sort_keys=True),
            "train": self._train_fingerprint,
            **{
                f"val@{name}": fp
                for name, fp in zip(self.val_set_names, self._val_fingerprints, strict=True)
            },
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
        has the inputs' shape (per-position, -100 where unscored) for "lm" tasks and is an (n,)
        label array for "classification".
        """

    def _split_fingerprint(self, split: str, parts: Sequence[Part], train: str = "") -> str:
        payload = {
            "task": self.task_name,
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
                    f"{self.task_name} {part.name!r}: every example also occurs in the training "
                    "split, so the set would be empty; use a larger vocabulary or longer sequences"
                )
            if kept < part.n_examples:
                dropped = part.n_examples - kept
                log.info(
                    "%s %s: dropped %d examples seen in training",
                    self.task_name,
                    part.name,
                    dropped,
                )

    def _build(
        self, fingerprint: str, parts: list[Part], spawn_keys: list[tuple[int, int]], dedup: bool
    ) -> datasets.Dataset:
        return cached_dataset(
            self._examples,
            cache_dir=self.cache_dir,
            fingerprint=f"{self.task_name}-{fingerprint}",
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
        else:
            targets, _ = _column_to_padded(ds.data.column("target"), IGNORE_INDEX)
        return PaddedExamples(
            torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(lengths)
        )

    def _loader(self, examples: PaddedExamples | None, shuffle: bool) -> DataLoader:
        if examples is None:
            raise RuntimeError(f"call setup() on the {self.task_name} data module before loading")
        return DataLoader(
            examples,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            collate_fn=pad_collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._train, shuffle=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        if not self._vals:
            return self._loader(None, shuffle=False)
        loaders = [self._loader(examples, shuffle=False) for examples in self._vals]
        return loaders[0] if len(loaders) == 1 else loaders


def _sample_distinct(rng: np.random.Generator, n: int, population: int, k: int) -> np.ndarray:
    """(n, k) draws without replacement from ``range(population)``, in uniformly random order.

    The indices of the k smallest of ``population`` uniforms form a uniform k-subset, and
    ordering them by their uniforms gives a uniformly random order (exchangeability).
    """
    noise = rng.random((n, population), dtype=np.float32)
    picked = np.argpartition(noise, k - 1, axis=1)[:, :k]
    order = np.argsort(np.take_along_axis(noise, picked, axis=1), axis=1)
    return np.take_along_axis(picked, order, axis=1)


class MQARDataModule(SyntheticTaskDataModule):
    """Multi-query associative recall (Zoology, Arora et al. 2023).

    An example opens with ``num_kv_pairs`` key-value pairs ``k1 v1 k2 v2 ...`` (distinct keys
    from one half of the vocabulary, distinct values from the other), then every key is queried
    once in the rest of the sequence. Queries sit at even offsets of that region; the gap from the
    region's start is drawn without replacement with probability proportional to
    ``gap ** (power_a - 1)`` (power_a=1: uniform; small power_a: mostly near the context, with a
    heavy tail, as repeated bigrams in text). The target at a query is the key's value; every
    other target is -100. Non-query positions hold random ordinary tokens
    (``random_non_queries``) or the filler token 1.

    Give either one configuration (``seq_len``, ``num_kv_pairs``, ``num_train``) or
    ``train_configs``: a list of ``{seq_len, num_kv_pairs, n_examples}`` mixed in training.
    ``test_configs`` (same keys) are separate validation sets named ``seq_len=L,kv=K``; by
    default the training configurations with ``num_val`` examples each.
    """

    task_name = "mqar"
    FILLER_ID = 1
    FIRST_TOKEN_ID = 2
    CONFIG_KEYS: ClassVar[frozenset[str]] = frozenset({"seq_len", "num_kv_pairs", "n_examples"})

    def __init__(
        self,
        *,
        vocab_size: int = 256,
        seq_len: int | None = None,
        num_kv_pairs: int | None = None,
        num_train: int | None = None,
        num_val: int | None = None,
        train_configs: Sequence[Mapping[str, int]] | None = None,
        test_configs: Sequence[Mapping[str, int]] | None = None,
        power_a: float = 0.01,
        random_non_queries: bool = True,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        _check_positive(vocab_size=vocab_size)
        if vocab_size < 6:
            raise ValueError(
                f"mqar needs vocab_size >= 6 (pad, filler, 2 keys, 2 values), got {vocab_size}"
            )
        if not power_a > 0:
            raise ValueError(f"power_a must be > 0 (1.0 = uniform gaps), got {power_a}")
        if train_configs is None:
            train_configs = [
                {
                    "seq_len": 64 if seq_len is None else seq_len,
                    "num_kv_pairs": 8 if num_kv_pairs is None else num_kv_pairs,
                    "n_examples": 20_000 if num_train is None else num_train,
                }
            ]
        elif seq_len is not None or num_kv_pairs is not None or num_train is not None:
            raise ValueError(
                "give either seq_len/num_kv_pairs/num_train or train_configs, not both"
            )
        train_parts = self._parse_configs(train_configs, "train_configs", vocab_size)
        if test_configs is None:
            n_val = 1_000 if num_val is None else num_val
            val_parts = [Part(p.name, n_val, p.settings) for p in train_parts]
            val_parts = list({p.name: p for p in val_parts}.values())
        elif num_val is not None:
            raise ValueError("give either num_val or test_configs (with n_examples), not both")
        else:
            val_parts = self._parse_configs(test_configs, "test_configs", vocab_size)
        self.power_a = float(power_a)
        self.random_non_queries = bool(random_non_queries)
        super().__init__(
            params={
                "vocab_size": int(vocab_size),
                "power_a": self.power_a,
                "random_non_queries": self.random_non_queries,
            },
            train_parts=train_parts,
            val_parts=val_parts,
            vocab_size=vocab_size,
            max_len=max(p.settings["seq_len"] for p in (*train_parts, *val_parts)),
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
            cache_dir=cache_dir,
        )

    @property
    def num_keys(self) -> int:
        """Keys are ids [2, 2 + num_keys); values are the ids above them."""
        return self._num_keys(self.vocab_size)

    @classmethod
    def _num_keys(cls, vocab_size: int) -> int:
        return (vocab_size - cls.FIRST_TOKEN_ID) // 2

    @classmethod
    def _parse_configs(
        cls, configs: Sequence[Mapping[str, int]], what: str, vocab_size: int
    ) -> list[Part]:
        if isinstance(configs, (str, Mapping)) or not configs:
            keys = ", ".join(sorted(cls.CONFIG_KEYS))
            raise ValueError(f"{what} must be a non-empty list of {{{keys}}}")
        num_keys = cls._num_keys(vocab_size)
        parts = []
        for config in configs:
            keys = set(config)
            if keys != cls.CONFIG_KEYS:
                raise ValueError(
                    f"each entry of {what} needs exactly the keys {sorted(cls.CONFIG_KEYS)}, "
                    f"got {sorted(keys)}"
                )
            seq_len, kv, n = (int(config[k]) for k in ("seq_len", "num_kv_pairs", "n_examples"))
            _check_positive(seq_len=seq_len, num_kv_pairs=kv, n_examples=n)
            if 4 * kv > seq_len:
                raise ValueError(
                    f"{what}: seq_len={seq_len} cannot hold {kv} key-value pairs and their "
                    f"queries; need seq_len >= 4 * num_kv_pairs = {4 * kv}"
                )
            if kv > num_keys:
                raise ValueError(
                    f"{what}: {kv} distinct keys need vocab_size >= {2 * kv + 2}, got {vocab_size}"
                )
            parts.append(
                Part(f"seq_len={seq_len},kv={kv}", n, {"seq_len": seq_len, "num_kv_pairs": kv})
            )
        return parts

    def generate(
        self, rng: np.random.Generator, n: int, *, seq_len: int, num_kv_pairs: int
    ) -> tuple[np.ndarray, np.ndarray]:
        k, first = num_kv_pairs, self.FIRST_TOKEN_ID
        keys = _sample_distinct(rng, n, self.num_keys, k) + first
        num_values = self.vocab_size - first - self.num_keys
        values = _sample_distinct(rng, n, num_values, k) + first + self.num_keys

        # Gumbel-top-k over log p: the k largest perturbed scores, in descending order, are k
        # sequential draws without replacement from p, so key j gets the j-th drawn gap.
        space = (seq_len - 2 * k) // 2
        log_p = (self.power_a - 1.0) * np.log(np.arange(1, space + 1))
        scores = log_p + rng.gumbel(size=(n, space))
        gaps = np.argsort(-scores, axis=1)[:, :k]
        query_pos = 2 * k + 2 * gaps

        if self.random_non_queries:
            inputs = rng.integers(first, self.vocab_size, size=(n, seq_len))
        else:
            inputs = np.full((n, seq_len), self.FILLER_ID)
        inputs[:, 0 : 2 * k : 2] = keys
        inputs[:, 1 : 2 * k : 2] = values
        np.put_along_axis(inputs, query_pos, keys, axis=1)
        targets = np.full((n, seq_len), IGNORE_INDEX)
        np.put_along_axis(targets, query_pos, values, axis=1)
        return inputs, targets


class SelectiveCopyDataModule(SyntheticTaskDataModule):
    """Selective copying (Mamba, Gu & Dao 2023; the S4 repository's variable copying task).

    ``num_data_tokens`` data tokens sit at random positions of a region of ``seq_len`` noise
    tokens; ``num_data_tokens`` marker tokens follow, and at the i-th marker the model must emit
    the i-th data token. Only marker positions are scored. Because the spacing is random, a fixed
    (input-independent) convolution cannot solve it; the mixer must select by content.
    Ids: 0 pad, 1 noise, 2 marker, data tokens from [3, vocab_size).
    """

    task_name = "selective_copy"
    NOISE_ID = 1
    MARKER_ID = 2
    FIRST_TOKEN_ID = 3

    def __init__(
        self,
        *,
        vocab_size: int = 16,
        seq_len: int = 64,
        num_data_tokens: int = 8,
        num_train: int = 10_000,
        num_val: int = 1_000,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        _check_positive(vocab_size=vocab_size, seq_len=seq_len, num_data_tokens=num_data_tokens)
        if vocab_size <= self.FIRST_TOKEN_ID:
            raise ValueError(
                f"selective_copy needs vocab_size >= 4 (3 special ids), got {vocab_size}"
            )
        if num_data_tokens > seq_len:
            raise ValueError(
                f"num_data_tokens={num_data_tokens} do not fit in seq_len={seq_len}; "
                "raise seq_len or lower num_data_tokens"
            )
        settings = {"seq_len": seq_len, "num_data_tokens": num_data_tokens}
        super().__init__(
            params={"vocab_size": vocab_size},
            train_parts=[Part("train", num_train, settings)],
            val_parts=[Part("val", num_val, settings)],
            vocab_size=vocab_size,
            max_len=seq_len + num_data_tokens,
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
            cache_dir=cache_dir,
        )

    def generate(
        self, rng: np.random.Generator, n: int, *, seq_len: int, num_data_tokens: int
    ) -> tuple[np.ndarray, np.ndarray]:
        m = num_data_tokens
        positions = np.sort(_sample_distinct(rng, n, seq_len, m), axis=1)
        data = rng.integers(self.FIRST_TOKEN_ID, self.vocab_size, size=(n, m))
        inputs = np.full((n, seq_len + m), self.NOISE_ID)
        np.put_along_axis(inputs, positions, data, axis=1)
        inputs[:, seq_len:] = self.MARKER_ID
        targets = np.full((n, seq_len + m), IGNORE_INDEX)
        targets[:, seq_len:] = data
        return inputs, targets


class InductionHeadsDataModule(SyntheticTaskDataModule):
    """Induction heads (Olsson et al. 2022; as in Mamba, Gu & Dao 2023).

    A random sequence holds a trigger token once, followed by a target token, and ends with the
    trigger again: at the last position the model must recall the token that followed the first
    trigger. Only the last position is scored. ``test_seq_lens`` adds validation sets at other
    lengths (named ``seq_len=L``) to measure length extrapolation.
    Ids: 0 pad, 1 trigger, ordinary tokens from [2, vocab_size).
    """

    task_name = "induction_heads"
    TRIGGER_ID = 1
    FIRST_TOKEN_ID = 2

    def __init__(
        self,
        *,
        vocab_size: int = 16,
        seq_len: int = 64,
        test_seq_lens: Sequence[int] | None = None,
        num_train: int = 10_000,
        num_val: int = 1_000,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        _check_positive(vocab_size=vocab_size, seq_len=seq_len)
        if vocab_size <= self.FIRST_TOKEN_ID:
            raise ValueError(
                f"induction_heads needs vocab_size >= 3 (2 special ids), got {vocab_size}"
            )
        lengths = [seq_len] if test_seq_lens is None else [int(x) for x in test_seq_lens]
        if not lengths or min([*lengths, seq_len]) < 3:
            raise ValueError(
                f"induction_heads needs sequences of length >= 3 and a non-empty test_seq_lens, "
                f"got seq_len={seq_len}, test_seq_lens={test_seq_lens}"
            )
        super().__init__(
            params={"vocab_size": vocab_size},
            train_parts=[Part("train", num_train, {"seq_len": seq_len})],
            val_parts=[Part(f"seq_len={n}", num_val, {"seq_len": n}) for n in lengths],
            vocab_size=vocab_size,
            max_len=max([seq_len, *lengths]),
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
            cache_dir=cache_dir,
        )

    def generate(
        self, rng: np.random.Generator, n: int, *, seq_len: int
    ) -> tuple[np.ndarray, np.ndarray]:
        inputs = rng.integers(self.FIRST_TOKEN_ID, self.vocab_size, size=(n, seq_len))
        trigger_pos = rng.integers(0, seq_len - 2, size=n)  # its target is at most at seq_len - 2
        rows = np.arange(n)
        inputs[rows, trigger_pos] = self.TRIGGER_ID
        inputs[:, -1] = self.TRIGGER_ID
        targets = np.full((n, seq_len), IGNORE_INDEX)
        targets[:, -1] = inputs[rows, trigger_pos + 1]
        return inputs, targets


LISTOPS_TOKENS = ("<pad>", *"0123456789", "[MAX", "[MIN", "[MED", "[SM", "]")
_DIGIT_ID = LISTOPS_TOKENS.index("0")
_OP_ID = LISTOPS_TOKENS.index("[MAX")
_CLOSE_ID = LISTOPS_TOKENS.index("]")


def listops_decode(tokens: Sequence[int]) -> str:
    """ListOps token ids as the LRA text form, e.g. ``[MAX 2 [MIN 4 7 ] 0 ]`` (padding dropped)."""
    return " ".join(LISTOPS_TOKENS[int(t)] for t in tokens if int(t) != PAD_ID)


def _listops_apply(op: int, args: list[int]) -> int:
    """MAX, MIN, MED (``int(median)``, as LRA) and SM (sum modulo 10), in LRA's token order."""
    if op == 0:
        return max(args)
    if op == 1:
        return min(args)
    if op == 2:
        ordered = sorted(args)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) // 2
    return sum(args) % 10


class ListOpsDataModule(SyntheticTaskDataModule):
    """ListOps (Nangia & Bowman 2018, as in Long Range Arena): classify a nested expression's value.

    Expressions like ``[MAX 2 9 [MIN 4 7 ] 0 ]`` over the digits 0-9 with the operators MAX,
    MIN, MED and SM (sum mod 10); the label is the value (10 classes). The root is an operator;
    below it an argument is a digit with probability ``leaf_prob`` (always below ``max_depth``
    nested operators), else a nested expression with 2..``max_args`` arguments. Expressions
    outside [``min_length``, ``max_length``] tokens are redrawn. An encoder task: run it with
    ``causal: false``. Ids: 0 pad, digits 1-10, operators 11-14, ``]`` 15.
    """

    task_name = "listops"
    task_type = "classification"
    MAX_TRIES = 10_000

    def __init__(
        self,
        *,
        max_depth: int = 4,
        max_args: int = 5,
        leaf_prob: float = 0.6,
        min_length: int = 16,
        max_length: int = 128,
        num_train: int = 20_000,
        num_val: int = 1_000,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        _check_positive(max_depth=max_depth, max_args=max_args, max_length=max_length)
        if max_args < 2:
            raise ValueError(f"max_args must be >= 2 (operators take 2..max_args), got {max_args}")
        if not 0.0 <= leaf_prob <= 1.0:
            raise ValueError(f"leaf_prob must lie in [0, 1], got {leaf_prob}")
        if not 4 <= min_length <= max_length:
            raise ValueError(
                f"need 4 <= min_length <= max_length (the shortest expression is 4 tokens), "
                f"got min_length={min_length}, max_length={max_length}"
            )
        params = {
            "max_depth": max_depth,
            "max_args": max_args,
            "leaf_prob": float(leaf_prob),
            "min_length": min_length,
            "max_length": max_length,
        }
        self.max_depth, self.max_args, self.leaf_prob = max_depth, max_args, float(leaf_prob)
        self.min_length, self.max_length = min_length, max_length
        super().__init__(
            params=params,
            train_parts=[Part("train", num_train)],
            val_parts=[Part("val", num_val)],
            vocab_size=len(LISTOPS_TOKENS),
            max_len=max_length,
            num_classes=10,
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
            cache_dir=cache_dir,
        )

    def _expression(self, rnd: random.Random, depth: int, out: list[int]) -> int:
        """Append one expression's tokens to ``out``; return its value."""
        if depth > 1 and (depth > self.max_depth or rnd.random() < self.leaf_prob):
            digit = rnd.randrange(10)
            out.append(_DIGIT_ID + digit)
            return digit
        op = rnd.randrange(4)
        out.append(_OP_ID + op)
        args = [self._expression(rnd, depth + 1, out) for _ in range(rnd.randint(2, self.max_args))]
        out.append(_CLOSE_ID)
        return _listops_apply(op, args)

    def generate(self, rng: np.random.Generator, n: int) -> tuple[list[np.ndarray], np.ndarray]:
        # Trees are recursive, so they are drawn in Python, from a stream seeded by ``rng``.
        rnd = random.Random(int(rng.integers(2**63)))
        inputs, labels = [], np.empty(n, dtype=np.int64)
        for i in range(n):
            for _ in range(self.MAX_TRIES):
                tokens: list[int] = []
                value = self._expression(rnd, 1, tokens)
                if self.min_length <= len(tokens) <= self.max_length:
                    break
            else:
                raise ValueError(
                    f"listops drew no expression of {self.min_length}..{self.max_length} tokens "
                    f"in {self.MAX_TRIES} tries; widen the range or change max_depth/max_args/"
                    "leaf_prob"
                )
            inputs.append(np.asarray(tokens))
            labels[i] = value
        return inputs, labels
