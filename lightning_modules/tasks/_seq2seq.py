"""What the synthetic seq2seq tasks share: a source of random length, a target the task derives
from it, and the chance level of a decoder that ignores the source.

Ids: 0 pad, 1 starts the target (the decoder's first input, never a target), 2 ends it (scored:
writing a target of the right length is part of the task), then the task's own tokens. Source
lengths are drawn from ``[min_length, max_length]``.

The same examples come in three layouts (``layout``), one per design that can solve the task:

- ``seq2seq``: source and target apart, for an encoder-decoder (``model=encoder_decoder``);
- ``prefix``: one sequence ``source, start, target`` for a decoder-only model (an ``lm`` task,
  causal), scored on the target's tokens only: the source is read as a prefix, causally, or both
  ways by a prefix LM (``model.prefix_lm``), for which batches mark it (``"prefix"``: the source
  and the start token);
- ``tagging``: ``source, start`` for an encoder (an ``lm`` task, not causal) that writes the
  target's i-th token at position i, all at once; it needs every target (with its end token) to
  be at most one longer than its source, as reversal, sorting, copying and addition are.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from mixerlab.lightning_modules.tasks._base import (
    BOS_ID,
    EOS_ID,
    IGNORE_INDEX,
    Baseline,
    scored_counts,
)
from mixerlab.lightning_modules.tasks._loading import check_positive, pad_collate
from mixerlab.lightning_modules.tasks._synthetic import Part, SyntheticTaskDataModule

FIRST_TOKEN_ID = max(BOS_ID, EOS_ID) + 1
# layout -> (task type, causal) of the batches it makes
LAYOUTS = {"seq2seq": ("seq2seq", True), "prefix": ("lm", True), "tagging": ("lm", False)}


def prefix_collate(examples: Sequence[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """:func:`pad_collate`'s batch of prefix-layout examples and ``"prefix"`` (B,): each row's
    source and start token, the positions through its first scored one (the start token's, where
    the target's first token is written)."""
    batch = pad_collate(examples)
    batch["prefix"] = (batch["target"] != IGNORE_INDEX).int().argmax(dim=1) + 1
    return batch


class Seq2SeqSyntheticDataModule(SyntheticTaskDataModule):
    """A synthetic seq2seq task: a subclass draws sources (:meth:`draw_sources`) and maps each to
    its target (:meth:`target_of`); this class adds the end token, sizes the vocabulary and the
    lengths, and derives the chance level from the examples."""

    scores_sequences = True

    def __init__(
        self,
        *,
        params: Mapping[str, Any],
        n_tokens: int,
        min_length: int,
        max_length: int,
        max_target_length: int,
        num_train: int,
        num_val: int,
        batch_size: int,
        layout: str = "seq2seq",
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
        fresh_every_epoch: bool = False,
    ) -> None:
        """``n_tokens`` ids after the special ones; ``max_target_length`` the longest target
        before its end token; ``layout`` one of :data:`LAYOUTS` (module docstring)."""
        check_positive(min_length=min_length, max_length=max_length, n_tokens=n_tokens)
        if min_length > max_length:
            raise ValueError(
                f"{self.name}: min_length={min_length} exceeds max_length={max_length}; "
                "give min_length <= max_length"
            )
        if layout not in LAYOUTS:
            raise ValueError(
                f"{self.name}: layout={layout!r} is not a layout; choose one of "
                f"{', '.join(LAYOUTS)}"
            )
        self.layout = layout
        self.task_type, self.causal = LAYOUTS[layout]
        source, target = self.source_length(max_length), max_target_length + 1  # with its end
        max_len = {"seq2seq": target, "prefix": source + target, "tagging": source + 1}[layout]
        settings = {"min_length": min_length, "max_length": max_length}
        super().__init__(
            params={**params, **({} if layout == "seq2seq" else {"layout": layout})},
            train_parts=[Part("train", num_train, settings)],
            val_parts=[Part("val", num_val, settings)],
            vocab_size=FIRST_TOKEN_ID + n_tokens,
            max_len=max_len,
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
            cache_dir=cache_dir,
            fresh_every_epoch=fresh_every_epoch,
        )
        if layout == "seq2seq":
            self.max_source_len, self.start_id = source, BOS_ID

    @classmethod
    def declared(cls, datamodule: Mapping[str, Any]) -> tuple[str, bool]:
        """The layout's task type and causality."""
        return LAYOUTS.get(datamodule.get("layout", "seq2seq"), (cls.task_type, cls.causal))

    @classmethod
    def prefix_batches(cls, datamodule: Mapping[str, Any]) -> bool:
        """The prefix layout's batches mark each sequence's source and start token."""
        return datamodule.get("layout", "seq2seq") == "prefix"

    @property
    def collate(self) -> Callable[[Sequence[tuple[Tensor, Tensor]]], dict[str, Tensor]]:
        """The prefix layout's batches add ``"prefix"``: see :func:`prefix_collate`."""
        return prefix_collate if self.layout == "prefix" else super().collate

    def source_length(self, length: int) -> int:
        """The number of source tokens an example of ``length`` has (the drawn length itself,
        unless a task adds tokens around it)."""
        return length

    @abstractmethod
    def draw_sources(
        self, rng: np.random.Generator, n: int, min_length: int, max_length: int
    ) -> list[np.ndarray]:
        """``n`` sources as token ids, their lengths drawn in ``[min_length, max_length]``."""

    @abstractmethod
    def target_of(self, source: np.ndarray) -> np.ndarray:
        """The target the task asks for ``source``, without its end token."""

    def generate(
        self, rng: np.random.Generator, n: int, *, min_length: int, max_length: int
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        sources = self.draw_sources(rng, n, min_length, max_length)
        targets = [np.append(self.target_of(source), EOS_ID) for source in sources]
        if self.layout == "seq2seq":
            return sources, targets
        pairs = list(zip(sources, targets, strict=True))
        if self.layout == "prefix":  # source, start, target; scored where the target is
            inputs = [np.concatenate([source, [BOS_ID], target[:-1]]) for source, target in pairs]
            unscored = [np.full(len(source), IGNORE_INDEX) for source in sources]
            return inputs, [np.concatenate([u, t]) for u, t in zip(unscored, targets, strict=True)]
        tagged = []  # tagging: the target's tokens at the source's positions and one more
        for source, target in pairs:
            if len(target) > len(source) + 1:
                raise ValueError(
                    f"{self.name}: a target of {len(target)} tokens (its end token included) "
                    f"does not fit the {len(source) + 1} positions of its source and the start "
                    "token, so an encoder cannot tag it; use layout=seq2seq or prefix"
                )
            tagged.append(
                np.pad(target, (0, len(source) + 1 - len(target)), constant_values=IGNORE_INDEX)
            )
        return [np.append(source, BOS_ID) for source in sources], tagged

    def baselines(self) -> dict[str, Baseline]:
        """The target tokens' frequencies in training (the end token among them), scored on each
        validation set: the best a decoder that ignores the source and its own past can do."""
        if self._train is None:
            raise RuntimeError(f"{self.name} baselines come from the data: call setup() first")
        answers = slice(EOS_ID, self.vocab_size)  # pad and start are never targets
        fitted = scored_counts([self._train.targets], self.vocab_size)[answers]
        baselines = {}
        for name, examples in zip(self.val_set_names, self._vals, strict=True):
            scored = scored_counts([examples.targets], self.vocab_size)[answers]
            how = "the target tokens' training frequencies (the end token among them)"
            baselines[name] = Baseline.prior("chance", fitted, scored, how)
        return baselines
