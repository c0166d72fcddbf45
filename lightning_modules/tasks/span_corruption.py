"""T5's span corruption (Raffel et al. 2020) on the text task's corpus: a seq2seq task.

The standard pretraining objective of encoder-decoders. Of each row's real tokens, spans are
dropped from the source, each replaced by one sentinel; the target lists each sentinel followed
by the tokens it replaced, then the end token::

    source: The <X> walks in <Y> park          (T5's example, in words)
    target: <X> cute dog <Y> the <end>

Spans follow T5's ``random_spans_noise_mask``: ``round(noise_density * length)`` noise tokens (at
least one, and one left unhidden when the row has two or more), in ``round(noise / mean_span_
length)`` spans (at least one), both the noise and the kept tokens cut into that many segments
of random positive length, and the row reads kept, noise, kept, noise, ... from a kept segment.

Rows, their cache and the seeding of which tokens are hidden are the MLM task's
(:mod:`.mlm`): one document per row of up to ``seq_len`` tokens; training rows are corrupted
afresh each epoch from ``(seed, epoch, row)``, validation rows once and for all from the row.

Ids: the tokenizer's (0..255 for bytes), then the decoder's start token, the end token and the
sentinels (as many as a full row can have spans). The synthetic seq2seq tasks start the decoder
with id 1; a text vocabulary already uses id 1, so this task's start is its own ``start_id``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mixerlab.lightning_modules.tasks._base import Baseline, register_task, scored_counts
from mixerlab.lightning_modules.tasks._loading import seq2seq_batch
from mixerlab.lightning_modules.tasks.mlm import MaskedLMDataModule

MEAN_SPAN_LENGTH = 3.0  # T5's


def noise_counts(length: int, density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, spans) of a row of ``length`` real tokens, as T5 counts them."""
    noise = min(max(round(length * density), 1), max(length - 1, 1))
    spans = max(round(noise / mean_span_length), 1)
    return noise, min(spans, noise, max(length - noise, 1))


def _segments(rng: np.random.Generator, total: int, parts: int) -> np.ndarray:
    """``total`` cut into ``parts`` random positive lengths (one part of 0 when total is 0)."""
    if total == 0:
        return np.zeros(1, dtype=np.int64)
    cuts = np.sort(rng.choice(np.arange(1, total), size=parts - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [total]]))


@dataclass(frozen=True)
class SpanCorruption:
    """The collate function: rows ``(ids, lengths, keys)`` (as the MLM task's rows come) to a
    seq2seq batch, each row corrupted by its own generator (see the module docstring)."""

    start_id: int
    end_id: int
    first_sentinel: int
    density: float
    mean_span_length: float = MEAN_SPAN_LENGTH

    def corrupt(self, ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One row's (source, target)."""
        noise, spans = noise_counts(len(ids), self.density, self.mean_span_length)
        hidden = _segments(rng, noise, spans)
        kept = _segments(rng, len(ids) - noise, spans)
        source, target, at = [], [], 0
        for span, (keep, hide) in enumerate(zip(kept, hidden, strict=True)):
            source.append(ids[at : at + keep])
            at += keep
            sentinel = [self.first_sentinel + span]
            source.append(sentinel)
            target += [sentinel, ids[at : at + hide]]
            at += hide
        source.append(ids[at:])
        target.append([self.end_id])
        return np.concatenate(source).astype(np.int64), np.concatenate(target).astype(np.int64)

    def __call__(self, rows: tuple[Tensor, Tensor, Sequence[tuple[int, ...]]]) -> dict[str, Tensor]:
        ids, lengths, keys = rows
        pairs = [
            self.corrupt(row[:n].numpy(), np.random.default_rng(key))
            for row, n, key in zip(ids, lengths.tolist(), keys, strict=True)
        ]
        sources = [torch.from_numpy(source) for source, _ in pairs]
        targets = [torch.from_numpy(target) for _, target in pairs]
        return seq2seq_batch(sources, targets, self.start_id)


@register_task("span_corruption", task_type="seq2seq", causal=True)
class SpanCorruptionDataModule(MaskedLMDataModule):
    """T5's span corruption on the text task's corpus: an encoder-decoder's pretraining task.

    Takes the text task's arguments, ``mask_rate`` (T5's noise density, 0.15) and
    ``mean_span_length`` (3). ``setup`` sets ``vocab_size`` to the tokenizer's plus the start
    token, the end token and the sentinels, ``max_source_len``, ``max_len`` (the longest
    target) and ``start_id``; ``bytes_per_token`` is None (a hidden span's loss is no
    compression rate of the text).
    """

    scores_sequences = True

    def __init__(self, *, mean_span_length: float = MEAN_SPAN_LENGTH, **mlm_arguments: Any) -> None:
        super().__init__(**mlm_arguments)
        if not mean_span_length >= 1:
            raise ValueError(
                f"mean_span_length={mean_span_length!r} must be at least 1 token, e.g. 3 (T5)"
            )
        self.mean_span_length = float(mean_span_length)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        assert self.tokenizer is not None
        self.start_id = self.tokenizer.vocab_size
        counts = [
            noise_counts(n, self.mask_rate, self.mean_span_length)
            for n in range(1, 1 + self.seq_len)
        ]
        self.vocab_size = self.start_id + 2 + max(spans for _, spans in counts)
        self.max_source_len = max(n - noise + spans for n, (noise, spans) in enumerate(counts, 1))
        self.max_len = max(noise + spans + 1 for noise, spans in counts)
        self.fingerprint = {**self.fingerprint, "mean_span_length": self.mean_span_length}

    @property
    def masking(self) -> SpanCorruption:
        """T5's span corruption, this task's masking of the MLM task's rows."""
        if self.start_id is None:
            raise RuntimeError("the special ids come from the tokenizer: call setup() first")
        return SpanCorruption(
            self.start_id, self.start_id + 1, self.start_id + 2, self.mask_rate,
            self.mean_span_length,
        )  # fmt: skip

    def baselines(self) -> dict[str, Baseline]:
        """The validation targets' own token frequencies (sentinels and the end token among
        them): the best fixed guess on that set, a model that reads neither the source nor the
        target so far."""
        targets = (batch["target"] for batch in self.val_dataloader())
        counts = scored_counts(targets, self.vocab_size)
        how = (
            "the validation targets' own token frequencies (sentinels and the end token among them)"
        )
        return {"val": Baseline.prior("unigram", counts, counts, how)}


def _signature() -> inspect.Signature:
    """The MLM task's keyword arguments and ``mean_span_length``."""
    mlm = inspect.signature(MaskedLMDataModule.__init__)
    own = inspect.signature(SpanCorruptionDataModule.__init__).parameters["mean_span_length"]
    return mlm.replace(parameters=[*mlm.parameters.values(), own])


SpanCorruptionDataModule.__init__.__signature__ = _signature()
