"""Text language modelling: a corpus, a tokenizer and fixed-length blocks, all cached.

Sources (``source=``, see :mod:`mixerlab.lightning_modules.tasks._corpus`):

- ``"stdlib"`` (default): the ``.py`` files of the running interpreter's standard library, tests
  and ``site-packages`` excluded. Every machine with the same Python build gets the same corpus,
  with nothing to download.
- a path: one text file (split into contiguous byte ranges) or a folder whose files match
  ``file_glob`` (split by file).
- ``"hf:<path>[:<config>]"``: a Hugging Face dataset through ``datasets.load_dataset``, or a folder
  written by ``save_to_disk`` (read with ``load_from_disk``); the text is in ``text_column``.

The pipeline has two cached stages per split, each a ``Dataset.from_generator`` with an explicit
fingerprint (a hash of what the data depends on):

1. tokens: one row per document ``{"name", "ids", "n_bytes"}``; reused when only ``seq_len``
   changes, and the source of the exact bytes-per-token ratio;
2. blocks: one row per ``seq_len + 1`` tokens of the split's concatenated token stream, stride
   ``seq_len``, so every token but the first is a target exactly once (the tail shorter than a
   block is dropped).

Cache layout under ``cache_dir`` (default ``$MIXERLAB_CACHE`` or ``~/.cache/mixerlab``)::

    datasets/generator/default-fingerprint=<stage fingerprint>/0.0.0/generator-<split>.arrow
    datasets/<builder>/...                       load_dataset's own cache for hf: sources
    tokenizers/bpe<vocab size>-<corpus key>.json  BPE tokenizers, trained on the train split
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from mixerlab.lightning_modules.tasks._base import Baseline, TaskDataModule, register_task
from mixerlab.lightning_modules.tasks._corpus import (
    DEFAULT_FILE_GLOB,
    DEFAULT_SPLIT,
    Corpus,
    DocumentReader,
    as_document,
    json_sha256,
    load_corpus,
)
from mixerlab.lightning_modules.tasks._loading import (
    build_loader,
    cached_dataset,
    check_non_negative,
    check_positive,
    default_cache_dir,
)
from mixerlab.lightning_modules.tasks._tokenizer import (
    MAX_VOCAB,
    TOKENIZERS,
    TextTokenizer,
    load_tokenizer,
)

# Bump when the layout or meaning of cached datasets changes, so old caches are not reused.
CACHE_VERSION = "1"
# Documents tokenised / chunked per step: bounds memory, lets BPE encode a batch in parallel.
DOC_BATCH = 64


def _token_rows(read: DocumentReader, tokenizer: TextTokenizer) -> Iterator[dict[str, Any]]:
    documents = read()
    while chunk := list(itertools.islice(documents, DOC_BATCH)):
        names = [name for name, _ in chunk]
        texts = [as_document(text) for _, text in chunk]
        for name, text, ids in zip(names, texts, tokenizer.encode_batch(texts), strict=True):
            yield {"name": name, "ids": ids, "n_bytes": len(text.encode())}


def _block_rows(tokens: datasets.Dataset, seq_len: int) -> Iterator[dict[str, np.ndarray]]:
    """Blocks of ``seq_len + 1`` tokens with stride ``seq_len`` over the split's token stream."""
    buffer = np.empty(0, dtype=np.uint16)
    for batch in tokens.select_columns(["ids"]).with_format("numpy").iter(batch_size=DOC_BATCH):
        buffer = np.concatenate([buffer, *batch["ids"]])
        n = (len(buffer) - 1) // seq_len
        for i in range(n):
            yield {"ids": buffer[i * seq_len : (i + 1) * seq_len + 1]}
        buffer = buffer[n * seq_len :]


def _cached(
    generator: Callable[[], Iterator[dict[str, Any]]], fingerprint: str, split: str, cache_dir: Path
) -> datasets.Dataset:
    """One split's stage, cached under ``fingerprint`` (see :func:`cached_dataset`).

    The generator must yield at least one row. Features are inferred from its uint16 arrays
    (``ids`` becomes ``list<uint16>``): declaring them makes ``datasets`` turn every array into
    Python scalars, which builds about 7x slower.
    """
    return cached_dataset(
        generator, cache_dir=cache_dir, fingerprint=fingerprint, split=datasets.NamedSplit(split)
    )


def _num_tokens(tokens: datasets.Dataset) -> int:
    return pc.sum(pc.list_value_length(tokens.data.column("ids"))).as_py() or 0


def _token_counts(tokens: datasets.Dataset, vocab_size: int) -> np.ndarray:
    """How often each token id occurs in a split."""
    ids = pc.list_flatten(tokens.data.column("ids")).to_numpy()
    return np.bincount(ids, minlength=vocab_size)


def _num_bytes(tokens: datasets.Dataset) -> int:
    return pc.sum(tokens.data.column("n_bytes")).as_py() or 0


class _BlockBatches(TorchDataset):
    """The blocks of a split, fetched a whole batch per Arrow ``take`` (``__getitems__``), so
    there is no per-row Python work or stacking in the loader."""

    def __init__(self, blocks: datasets.Dataset) -> None:
        self.blocks = blocks.with_format("torch", columns=["ids"])

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> Tensor:
        return self.blocks[index]["ids"]

    def __getitems__(self, indices: list[int]) -> Tensor:
        return self.blocks[indices]["ids"]


def _lm_batch(ids: Tensor) -> dict[str, Tensor]:
    """Next-token pairs from (B, seq_len + 1) blocks; every position is scored."""
    inputs = ids[:, :-1].contiguous()
    return {
        "input": inputs,
        "target": ids[:, 1:].contiguous(),
        "mask": torch.ones_like(inputs, dtype=torch.bool),
    }


@register_task("text", task_type="lm", causal=True)
class TextLMDataModule(TaskDataModule):
    """Byte-level language modelling on the Python standard library source (offline), or any text.

    Next-token prediction on real text, identical for every mixer. ``prepare_data`` reads the
    corpus, trains the BPE (if any) and writes the cached datasets; ``setup`` loads them
    (memory-mapped) and sets ``vocab_size``, ``fingerprint``, ``bytes_per_token`` (val-split
    bytes / val-split tokens: ``val/bpb`` is then the val loss per byte of the val text, which
    compares across tokenizers; a BPE trained on the train split compresses that split best, so
    its ratio would understate val bits per byte) and ``stats`` (documents, bytes, tokens and
    blocks per split).
    """

    def __init__(
        self,
        *,
        source: str = "stdlib",
        seq_len: int = 128,
        batch_size: int = 32,
        tokenizer: str = "bytes",
        bpe_vocab_size: int = 1024,
        split: Sequence[float] = DEFAULT_SPLIT,
        text_column: str = "text",
        file_glob: str | Sequence[str] = DEFAULT_FILE_GLOB,
        max_train_tokens: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        check_positive(seq_len=seq_len, batch_size=batch_size)
        check_non_negative(seed=seed, num_workers=num_workers)
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer={tokenizer!r} is unknown; use one of {list(TOKENIZERS)}")
        if tokenizer == "bpe" and not 256 < bpe_vocab_size <= MAX_VOCAB:
            raise ValueError(
                f"bpe_vocab_size={bpe_vocab_size} must be in (256, {MAX_VOCAB}]: the 256 byte "
                "tokens come first and ids are stored as uint16"
            )
        fractions = tuple(float(f) for f in split)
        if (
            len(fractions) != 3
            or min(fractions) < 0
            or fractions[0] <= 0
            or fractions[1] <= 0
            or abs(sum(fractions) - 1) > 1e-6
        ):
            raise ValueError(
                f"split={list(split)} must be three fractions (train, val, test) summing to 1, "
                "train and val positive (test may be 0), e.g. [0.9, 0.05, 0.05]"
            )
        if max_train_tokens is not None and max_train_tokens < seq_len:
            raise ValueError(
                f"max_train_tokens={max_train_tokens} is less than one block (seq_len={seq_len}); "
                "raise it or set it to null for the whole train split"
            )
        self.source = str(source)
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.tokenizer_kind = tokenizer
        self.bpe_vocab_size = bpe_vocab_size
        self.split = fractions
        self.text_column = text_column
        self.file_glob = (file_glob,) if isinstance(file_glob, str) else tuple(file_glob)
        self.max_train_tokens = max_train_tokens
        self.seed = seed
        self.num_workers = num_workers
        self.cache_dir = Path(cache_dir if cache_dir is not None else default_cache_dir())

        self.max_len = seq_len
        self.val_set_names = ["val"]
        self.vocab_size: int | None = None
        self.bytes_per_token: float | None = None
        self.fingerprint: dict[str, Any] = {}
        self.stats: dict[str, dict[str, int]] = {}
        self.tokenizer: TextTokenizer | None = None
        self.tokens: dict[str, datasets.Dataset] = {}
        self.blocks: dict[str, datasets.Dataset] = {}
        self._corpus: Corpus | None = None

    @property
    def corpus(self) -> Corpus:
        """The corpus (scanned and hashed once per process)."""
        if self._corpus is None:
            self._corpus = load_corpus(
                self.source,
                split=self.split,
                text_column=self.text_column,
                file_glob=self.file_glob,
                cache_dir=self.cache_dir,
            )
        return self._corpus

    def _build(
        self,
    ) -> tuple[TextTokenizer, dict[str, datasets.Dataset], dict[str, datasets.Dataset]]:
        """Tokenizer, tokens and blocks of every split: from the cache, built where missing."""
        corpus = self.corpus
        tokenizer = load_tokenizer(self.tokenizer_kind, self.bpe_vocab_size, corpus, self.cache_dir)
        tokens, blocks = {}, {}
        for split, read in corpus.splits.items():
            key = json_sha256(CACHE_VERSION, corpus.key, tokenizer.sha256, split)
            tokens[split] = _cached(
                functools.partial(_token_rows, read, tokenizer),
                key[:16],
                split,
                self.cache_dir,
            )
            n_tokens = _num_tokens(tokens[split])
            if n_tokens < self.seq_len + 1:
                raise ValueError(
                    f"the {split} split of {corpus.fingerprint['corpus']} has {n_tokens} tokens "
                    f"({len(tokens[split])} documents), fewer than seq_len+1={self.seq_len + 1}: "
                    f"lower seq_len, give {split} a larger fraction of split={list(self.split)}, "
                    "or use a larger corpus"
                )
            blocks[split] = self._blocks(tokens[split], key, split)
        return tokenizer, tokens, blocks

    def _blocks(self, tokens: datasets.Dataset, key: str, split: str) -> datasets.Dataset:
        """One split's second stage, the rows a loader serves, from its tokens (``key`` is the
        tokens' cache key): blocks of ``seq_len + 1`` tokens here; a subclass may cut them
        otherwise (``task=mlm``: one document's tokens per row)."""
        return _cached(
            functools.partial(_block_rows, tokens, self.seq_len),
            json_sha256(key, self.seq_len)[:16],
            split,
            self.cache_dir,
        )

    def prepare_data(self) -> None:
        self._build()

    def setup(self, stage: str | None = None) -> None:
        if self.blocks:
            return
        self.tokenizer, self.tokens, blocks = self._build()
        if self.max_train_tokens is not None:
            n = min(len(blocks["train"]), self.max_train_tokens // self.seq_len)
            blocks["train"] = blocks["train"].select(range(n))
        if len(blocks["train"]) < self.batch_size:
            raise ValueError(
                f"the train split has {len(blocks['train'])} blocks of seq_len={self.seq_len}, "
                f"fewer than batch_size={self.batch_size}; lower batch_size or seq_len, or raise "
                "max_train_tokens"
            )
        self.blocks = blocks
        self.vocab_size = self.tokenizer.vocab_size
        self.stats = {
            split: {
                "documents": len(self.tokens[split]),
                "bytes": _num_bytes(self.tokens[split]),
                "tokens": _num_tokens(self.tokens[split]),
                "blocks": len(blocks[split]),
            }
            for split in blocks
        }
        self.bytes_per_token = self.stats["val"]["bytes"] / self.stats["val"]["tokens"]
        self.fingerprint = {**self.corpus.fingerprint, "tokenizer": self.tokenizer.name}

    def baselines(self) -> dict[str, Baseline]:
        """The unigram model of the training split (token frequencies, whatever the context)
        scored on the validation split: the simplest model learnable from the training data,
        and the line a mixer must clear to have used any context. Its ``val/bpb`` follows from
        ``bytes_per_token``. Counted over every token of each split; the validation blocks
        score all but the split's first token and its tail shorter than a block."""
        if not self.tokens or self.vocab_size is None:
            raise RuntimeError("the unigram baseline comes from the data: call setup() first")
        train, val = (_token_counts(self.tokens[s], self.vocab_size) for s in ("train", "val"))
        unit = "byte" if self.tokenizer_kind == "bytes" else "BPE token"
        how = f"the training split's {unit} frequencies"
        return {"val": Baseline.prior("unigram", train, val, how)}

    def documents(self, split: str) -> list[str]:
        """Names of the documents in a split (file paths, byte ranges or dataset rows)."""
        return list(self.tokens[split]["name"])

    def _loader(self, split: str, *, train: bool) -> DataLoader:
        if split not in self.blocks:
            raise ValueError(
                f"no {split} split: call setup() first, or give it a positive fraction in split"
            )
        return build_loader(
            _BlockBatches(self.blocks[split]),
            batch_size=self.batch_size,
            collate_fn=_lm_batch,
            num_workers=self.num_workers,
            shuffle_seed=self.seed if train else None,
            drop_last=train,  # fixed shapes in training
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
