"""Masked language modelling (BERT, Devlin et al. 2019) on the text task's corpus.

The setting in which gMLP was compared with BERT (Liu et al. 2021, "Pay Attention to MLPs"): an
encoder (``causal=False``) reads a text with some tokens hidden and predicts them from both sides.

Data. The corpus, tokenizer and token cache are the text task's (:mod:`.text`, every source it
reads); the rows differ: one row per ``seq_len`` tokens of *one document*, so no row mixes two
documents and each document's last row is shorter and right-padded (``mask`` False there). Rows
are cached like the text task's blocks, padded to ``seq_len`` with their length beside them.

Vocabulary. ``[MASK]`` is one id past the tokenizer's (256 for bytes, ``bpe_vocab_size`` for
BPE): the model's vocabulary is the tokenizer's plus one, and ``[MASK]`` is never a target.

Masking (:class:`BertMasking`). Of each row's real tokens, ``round(mask_rate * length)`` (at least
one; 15% by default) are selected uniformly at random, as BERT's ``create_pretraining_data`` does
(an exact count rather than a coin per token: every row is scored, and the share never drifts).
Of the selected tokens 80% become ``[MASK]``, 10% a uniformly random token of the tokenizer's
vocabulary and 10% stay unchanged; targets are the original tokens there and -100 everywhere
else, padding included. ``val/loss``, ``val/ppl`` and ``val/acc`` are therefore the MLM loss,
perplexity and accuracy at the masked positions only.

Which tokens are masked is a function of the row, never of the batch it lands in or of the
worker that loads it (each row has its own generator):

- training rows are masked afresh each epoch (RoBERTa's dynamic masking: a model sees each row
  under new masks instead of memorising one), from ``(seed, epoch, row)``; the epoch reaches the
  workers inside each key and the order is that of
  :class:`~mixerlab.lightning_modules.tasks._resumable.EpochShuffle` (``keyed=True``), a function of
  ``(seed, epoch)``. A run resumed mid-epoch therefore goes on with the same rows under the same
  masks, as the uninterrupted run;
- validation and test rows are masked once and for all, from ``(split, row)``: every evaluation
  of every run scores the same positions, whatever the seed, so runs differ by their models only
  and the unigram baseline is exact for all of them.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from mixerlab.lightning_modules.tasks._base import (
    IGNORE_INDEX,
    PAD_ID,
    Baseline,
    register_task,
    scored_counts,
)
from mixerlab.lightning_modules.tasks._corpus import json_sha256
from mixerlab.lightning_modules.tasks._loading import build_loader
from mixerlab.lightning_modules.tasks._resumable import EpochShuffle
from mixerlab.lightning_modules.tasks.text import (
    DOC_BATCH,
    TextLMDataModule,
    _cached,
    _token_counts,
)

MASK_RATE = 0.15
# BERT's split of the selected tokens: [MASK], a random token, unchanged (the rest).
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1
# Seed streams: the masks of different splits never share random numbers.
STREAMS = {"train": 0, "val": 1, "test": 2}


def _chunk_rows(tokens: datasets.Dataset, seq_len: int) -> Iterator[dict[str, Any]]:
    """Each document's tokens in rows of ``seq_len`` (the last one shorter), right-padded."""
    for batch in tokens.select_columns(["ids"]).with_format("numpy").iter(batch_size=DOC_BATCH):
        for ids in batch["ids"]:
            for start in range(0, len(ids), seq_len):
                chunk = ids[start : start + seq_len]
                row = np.full(seq_len, PAD_ID, dtype=np.uint16)
                row[: len(chunk)] = chunk
                yield {"ids": row, "length": len(chunk)}


@dataclass(frozen=True)
class BertMasking:
    """The collate function: BERT's masking of padded rows, one seeded generator per row.

    Called with ``(ids, lengths, keys)``: (B, L) token ids right-padded, (B,) real lengths and
    one key per row (a tuple of non-negative ints that seeds that row's generator). Returns the
    batch dict ``{"input", "target", "mask"}``; see the module docstring for the rule.
    """

    mask_id: int  # the [MASK] token's id
    n_tokens: int  # random replacements are drawn from ids [0, n_tokens)
    rate: float = MASK_RATE

    def __call__(self, rows: tuple[Tensor, Tensor, Sequence[tuple[int, ...]]]) -> dict[str, Tensor]:
        ids, lengths, keys = rows
        seq_len = ids.shape[1]
        real = torch.arange(seq_len) < lengths[:, None]  # (B, L)
        draws = np.stack([np.random.default_rng(key).random((3, seq_len)) for key in keys])
        rank_u, kind_u, token_u = torch.from_numpy(draws).unbind(1)  # each (B, L)
        # The n smallest of the real positions' uniforms pick a uniformly random n-subset.
        order = rank_u.masked_fill(~real, math.inf).argsort(dim=1)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(seq_len).expand_as(order))
        selected = rank < (lengths * self.rate).round().clamp_min(1)[:, None]
        masked = selected & (kind_u < MASK_SHARE)
        randomised = selected & (kind_u >= MASK_SHARE) & (kind_u < MASK_SHARE + RANDOM_SHARE)
        inputs = torch.where(masked, self.mask_id, ids)
        inputs = torch.where(randomised, (token_u * self.n_tokens).long(), inputs)
        return {"input": inputs, "target": ids.masked_fill(~selected, IGNORE_INDEX), "mask": real}


class _Rows(TorchDataset):
    """A split's cached rows, a batch per Arrow ``take``, with each row's masking key
    ``(*key_prefix, epoch, row)``: training asks by ``(epoch, row)`` (a keyed EpochShuffle),
    evaluation by row alone, as epoch 0 of every evaluation."""

    def __init__(self, rows: datasets.Dataset, key_prefix: tuple[int, ...]) -> None:
        self.rows = rows.with_format("torch", columns=["ids", "length"])
        self.key_prefix = key_prefix

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, items: list[int] | list[tuple[int, int]]) -> tuple[Tensor, Tensor, list]:
        pairs = [item if isinstance(item, tuple) else (0, item) for item in items]
        rows = self.rows[[row for _, row in pairs]]
        keys = [(*self.key_prefix, epoch, row) for epoch, row in pairs]
        return rows["ids"].long(), rows["length"].long(), keys


@register_task("mlm", task_type="lm", causal=False)
class MaskedLMDataModule(TextLMDataModule):
    """Masked language modelling (BERT masking) on the text task's corpus: an encoder task.

    Takes the text task's arguments (same sources, tokenizers and cache) and ``mask_rate``, the
    share of each row's real tokens that is selected for prediction. ``setup`` sets
    ``vocab_size`` to the tokenizer's plus one (``mask_id``, the last id, is ``[MASK]``) and
    ``bytes_per_token`` to None: a masked token's loss is not a compression rate of the text, so
    runs log no ``val/bpb``.
    """

    def __init__(self, *, mask_rate: float = MASK_RATE, **text_arguments: Any) -> None:
        super().__init__(**text_arguments)
        if not 0 < mask_rate < 1:
            raise ValueError(f"mask_rate={mask_rate!r} must be a fraction in (0, 1), e.g. 0.15")
        self.mask_rate = float(mask_rate)
        self.mask_id: int | None = None

    def _blocks(self, tokens: datasets.Dataset, key: str, split: str) -> datasets.Dataset:
        return _cached(
            functools.partial(_chunk_rows, tokens, self.seq_len),
            json_sha256(key, "document rows", self.seq_len)[:16],
            split,
            self.cache_dir,
        )

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        assert self.tokenizer is not None
        self.mask_id = self.tokenizer.vocab_size
        self.vocab_size = self.mask_id + 1
        self.bytes_per_token = None
        self.fingerprint = {
            **self.corpus.fingerprint,
            "tokenizer": self.tokenizer.name,
            "rows": "documents",
            "mask_rate": self.mask_rate,
        }

    @property
    def masking(self) -> BertMasking:
        if self.mask_id is None:
            raise RuntimeError("the [MASK] id comes from the tokenizer: call setup() first")
        return BertMasking(self.mask_id, n_tokens=self.mask_id, rate=self.mask_rate)

    def baselines(self) -> dict[str, Baseline]:
        """The training split's unigram (every token counted) scored on exactly the tokens the
        validation masks select: a model that ignores the context can do no better, since the
        selection does not depend on which token sits at a position."""
        if self.mask_id is None:
            raise RuntimeError("the unigram baseline comes from the data: call setup() first")
        train = _token_counts(self.tokens["train"], self.mask_id)
        val = scored_counts((batch["target"] for batch in self.val_dataloader()), self.mask_id)
        unit = "byte" if self.tokenizer_kind == "bytes" else "BPE token"
        how = f"the training split's {unit} frequencies, at the validation masks"
        return {"val": Baseline.prior("unigram", train, val, how)}

    def _loader(self, split: str, *, train: bool) -> DataLoader:
        if split not in self.blocks:
            raise ValueError(
                f"no {split} split: call setup() first, or give it a positive fraction in split"
            )
        prefix = (STREAMS[split], self.seed) if train else (STREAMS[split],)
        rows = _Rows(self.blocks[split], prefix)
        return build_loader(
            rows,
            batch_size=self.batch_size,
            collate_fn=self.masking,
            num_workers=self.num_workers,
            # training: the order and the masks of an epoch follow from (seed, epoch) alone
            sampler=EpochShuffle(rows, self.seed, keyed=True) if train else None,
            drop_last=train,  # fixed shapes in training
        )


def _signature() -> inspect.Signature:
    """The text task's keyword arguments and ``mask_rate``: what the registry, the config schema
    and ``mixerlab list`` read, declared without repeating the text task's list."""
    text = inspect.signature(TextLMDataModule.__init__)
    own = inspect.signature(MaskedLMDataModule.__init__).parameters["mask_rate"]
    return text.replace(parameters=[*text.parameters.values(), own])


MaskedLMDataModule.__init__.__signature__ = _signature()
