"""Fuzzy in-context recall (MAD): keys and values of several tokens; recall a recurring key's."""

from __future__ import annotations

import numpy as np

from mixerlab.lightning_modules.tasks._base import IGNORE_INDEX, Baseline, register_task
from mixerlab.lightning_modules.tasks._loading import check_positive
from mixerlab.lightning_modules.tasks._mad import (
    MAD_BATCH_SIZE,
    MAD_NUM_TEST,
    MAD_NUM_TRAIN,
    MADTaskDataModule,
    next_token_example,
)
from mixerlab.lightning_modules.tasks._synthetic import sample_distinct

Motif = tuple[int, ...]


def _cut(motifs: np.ndarray, sizes: np.ndarray) -> list[Motif]:
    """The first ``sizes[i]`` tokens of each ``motifs[i]``: motifs of the drawn sizes."""
    return [tuple(m[:size]) for m, size in zip(motifs.tolist(), sizes.tolist(), strict=True)]


@register_task("mad_fuzzy_recall", task_type="lm", causal=True)
class MADFuzzyRecallDataModule(MADTaskDataModule):
    """Fuzzy in-context recall (MAD) - keys and values span several tokens; recall a key's value.

    MAD: Poli et al. 2024, ``generate_fuzzy_in_context_recall_instance`` with ``multi_query``.

    A key is a motif of 1 to ``k_motif_size`` distinct tokens from the lower half of the
    vocabulary (in test always ``k_motif_size``), a value one of 1 to ``v_motif_size`` distinct
    tokens from the upper half: the size drawn uniformly, then the motif uniformly among those
    of that size. A key's value is drawn where the key first occurs and comes with it every
    time. A probe pair is drawn first and put in at the first pair boundary at or after a place
    drawn uniformly from [0, seq_len - 2 * its length); pairs fill the context while it is
    shorter than ``seq_len`` - the probe's length - (``k_motif_size`` + ``v_motif_size``); the
    probe pair ends the sequence, which is left-padded with MAD's pad token to ``seq_len`` + 1
    tokens. The model reads all but the last. Training scores every next token (MAD's padding
    included); validation scores the value tokens of recurring keys, the final probe's included.
    MAD ids: keys [0, h), values [h, vocab_size - 1), pad vocab_size - 1, with
    h = (vocab_size - 1) // 2; ours are one up.

    As in MAD, a context that ends before the probe's place leaves the probe out (about 2% of
    test sequences at MAD's baseline); unless its key came up by chance, the final query then
    asks for a key never shown, and is scored all the same.
    """

    takes_is_training = True

    def __init__(
        self,
        *,
        vocab_size: int = 16,
        seq_len: int = 128,
        k_motif_size: int = 3,
        v_motif_size: int = 3,
        num_train: int = MAD_NUM_TRAIN,
        num_val: int = MAD_NUM_TEST,
        batch_size: int = MAD_BATCH_SIZE,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        check_positive(
            vocab_size=vocab_size,
            seq_len=seq_len,
            k_motif_size=k_motif_size,
            v_motif_size=v_motif_size,
        )
        longest = k_motif_size + v_motif_size
        if vocab_size < 2 * max(k_motif_size, v_motif_size) + 1:
            raise ValueError(
                f"vocab_size={vocab_size} is too small for motifs of k_motif_size={k_motif_size} "
                f"and v_motif_size={v_motif_size} distinct tokens from its halves; raise it to "
                f">= {2 * max(k_motif_size, v_motif_size) + 1}"
            )
        if seq_len <= 2 * longest:
            raise ValueError(
                f"seq_len={seq_len} leaves no room for the probe pair's place; MAD needs "
                f"seq_len > 2 * (k_motif_size + v_motif_size) = {2 * longest}"
            )
        self.k_motif_size = k_motif_size
        self.v_motif_size = v_motif_size
        self.num_keys = (vocab_size - 1) // 2
        self.num_values = vocab_size - 1 - self.num_keys
        self.mad_pad_token = vocab_size - 1  # a real token: training predicts it
        super().__init__(
            vocab_size=vocab_size,
            params={"k_motif_size": k_motif_size, "v_motif_size": v_motif_size},
            settings={"seq_len": seq_len},
            max_len=seq_len,
            num_train=num_train,
            num_val=num_val,
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
            cache_dir=cache_dir,
        )

    def baselines(self) -> dict[str, Baseline]:
        """A uniform guess over the value tokens: each token of a value motif is uniform over
        them (a motif is a uniformly drawn ordered set)."""
        return self.uniform_chance(self.num_values, "value tokens")

    def generate(
        self, rng: np.random.Generator, n: int, *, seq_len: int, is_training: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        # draw 0 of each row is its probe pair, the rest one per step of its context (each
        # step adds two tokens or more, so seq_len / 2 steps always suffice)
        draws = seq_len // 2 + 2
        k, v = self.k_motif_size, self.v_motif_size
        full_keys = np.full((n, draws), k)  # MAD's test keys all have k_motif_size tokens
        key_sizes = rng.integers(1, k + 1, size=(n, draws)) if is_training else full_keys
        value_sizes = rng.integers(1, v + 1, size=(n, draws))
        keys = sample_distinct(rng, n * draws, self.num_keys, k).reshape(n, draws, k)
        values = sample_distinct(rng, n * draws, self.num_values, v).reshape(n, draws, v)
        values += self.num_keys
        probe_places = rng.integers(0, seq_len - 2 * (key_sizes[:, 0] + value_sizes[:, 0]))

        sequences = np.full((n, seq_len + 1), self.mad_pad_token)
        answers = np.full((n, seq_len + 1), IGNORE_INDEX)
        for row in range(n):
            tokens, scored = self._example(
                seq_len,
                _cut(keys[row], key_sizes[row]),
                _cut(values[row], value_sizes[row]),
                int(probe_places[row]),
            )
            sequences[row, -len(tokens) :], answers[row, -len(tokens) :] = tokens, scored
        return next_token_example(sequences, answers, is_training)

    def _example(
        self, seq_len: int, keys: list[Motif], values: list[Motif], probe_place: int
    ) -> tuple[list[int], list[int]]:
        """One sequence's MAD tokens and answers, unpadded, laid out as MAD's generator lays
        them: the context from ``keys[1:]`` and ``values[1:]`` (one draw per step), then the
        probe pair ``keys[0]``, ``values[0]``."""
        probe_key, probe_value = keys[0], values[0]
        limit = seq_len - len(probe_key) - len(probe_value) - self.k_motif_size - self.v_motif_size
        tokens: list[int] = []
        answers: list[int] = []
        value_of: dict[Motif, Motif] = {}
        for drawn_key, drawn_value in zip(keys[1:], values[1:], strict=True):
            if len(tokens) >= limit:
                break
            key = drawn_key
            if probe_key not in value_of and len(tokens) >= probe_place:
                key = probe_key  # the probe goes in at the first boundary past its place
            value = probe_value if key == probe_key else value_of.get(key, drawn_value)
            tokens += key + value
            answers += [IGNORE_INDEX] * len(key)
            answers += value if key in value_of else [IGNORE_INDEX] * len(value)
            value_of[key] = value
        tokens += probe_key + probe_value
        answers += [IGNORE_INDEX] * len(probe_key) + list(probe_value)
        return tokens, answers
