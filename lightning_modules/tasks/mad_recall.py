"""In-context recall (MAD): key-value pairs whose keys recur; recall each recurring key's value."""

from __future__ import annotations

import numpy as np

from mixerlab.lightning_modules.tasks._base import IGNORE_INDEX, Baseline, register_task
from mixerlab.lightning_modules.tasks._loading import check_non_negative, check_positive
from mixerlab.lightning_modules.tasks._mad import (
    MAD_BATCH_SIZE,
    MAD_NUM_TEST,
    MAD_NUM_TRAIN,
    MADTaskDataModule,
    first_occurrences,
    next_token_example,
)


@register_task("mad_recall", task_type="lm", causal=True)
class MADRecallDataModule(MADTaskDataModule):
    """In-context recall (MAD) - recall the value a recurring key was paired with earlier.

    MAD: Poli et al. 2024, ``generate_in_context_recall_instance`` as its benchmark runs it
    (``multi_query``: every recurrence of a key is a query).

    A sequence of ``seq_len`` MAD tokens is ``seq_len / 2`` pairs ``key value``. Keys are drawn
    uniformly, with replacement, from the lower half of the non-noise tokens; a key's value is
    drawn uniformly from the upper half where the key first occurs and comes with it every
    time. The last pair repeats a key shown before, uniform over the distinct ones. The model
    reads all but the last token. Training scores every next token (MAD trains its recall tasks
    as language models); validation scores the values of recurring keys, the last one's
    included: the positions whose input is such a key.

    Noise (``frac_noise`` > 0): every pair of the context but one, drawn to stay a key-value
    pair, is instead, with probability ``frac_noise``, two tokens drawn uniformly from the
    ``noise_vocab_size`` noise tokens. MAD ids: keys [0, n // 2), values [n // 2, n), noise
    [n, vocab_size), n = vocab_size - noise_vocab_size; ours are one up. One departure: MAD
    draws its noise-free pair among all pairs, the final query's included, so with probability
    2 / seq_len it protects none, and a context all noise then crashes its generator; here it
    is drawn among the context's pairs.
    """

    takes_is_training = True

    def __init__(
        self,
        *,
        vocab_size: int = 16,
        seq_len: int = 128,
        noise_vocab_size: int = 0,
        frac_noise: float = 0.0,
        num_train: int = MAD_NUM_TRAIN,
        num_val: int = MAD_NUM_TEST,
        batch_size: int = MAD_BATCH_SIZE,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        check_positive(vocab_size=vocab_size, seq_len=seq_len)
        check_non_negative(noise_vocab_size=noise_vocab_size)
        if seq_len % 2 or seq_len < 4:
            raise ValueError(
                f"{self.name} needs an even seq_len >= 4 (key-value pairs, the last a query), "
                f"got {seq_len}"
            )
        if not 0 <= frac_noise < 1:
            raise ValueError(f"frac_noise is a probability below 1, got {frac_noise}")
        if frac_noise > 0 and noise_vocab_size == 0:
            raise ValueError(
                f"frac_noise={frac_noise} needs noise tokens to draw from; set noise_vocab_size"
            )
        recall_vocab = vocab_size - noise_vocab_size
        if recall_vocab < 2:
            raise ValueError(
                f"vocab_size={vocab_size} leaves {recall_vocab} tokens beside the "
                f"{noise_vocab_size} noise tokens; keys and values need 2: raise vocab_size"
            )
        self.num_keys = recall_vocab // 2
        self.num_values = recall_vocab - self.num_keys
        self.noise_vocab_size = noise_vocab_size
        self.frac_noise = float(frac_noise)
        super().__init__(
            vocab_size=vocab_size,
            params={"noise_vocab_size": noise_vocab_size, "frac_noise": self.frac_noise},
            settings={"seq_len": seq_len},
            max_len=seq_len - 1,
            num_train=num_train,
            num_val=num_val,
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
            cache_dir=cache_dir,
        )

    def baselines(self) -> dict[str, Baseline]:
        """A uniform guess over the values, from which each key's value is drawn uniformly."""
        return self.uniform_chance(self.num_values, "values")

    def generate(
        self, rng: np.random.Generator, n: int, *, seq_len: int, is_training: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        context, rows = seq_len // 2 - 1, np.arange(n)
        keys = rng.integers(0, self.num_keys, size=(n, context))
        value_of_key = rng.integers(
            self.num_keys, self.num_keys + self.num_values, size=(n, self.num_keys)
        )
        values = np.take_along_axis(value_of_key, keys, axis=1)
        noise = np.zeros((n, context), dtype=bool)
        firsts, seconds = keys, values
        if self.frac_noise > 0:
            noise = rng.random((n, context)) < self.frac_noise
            noise[rows, rng.integers(0, context, size=n)] = False  # one pair stays a pair
            first_noise = self.num_keys + self.num_values
            drawn = rng.integers(first_noise, first_noise + self.noise_vocab_size, (2, n, context))
            firsts, seconds = np.where(noise, drawn[0], keys), np.where(noise, drawn[1], values)
        recurs = ~noise & ~first_occurrences(np.where(noise, -1, keys))
        shown = np.zeros((n, self.num_keys), dtype=bool)
        shown[np.nonzero(~noise)[0], keys[~noise]] = True
        query = np.where(shown, rng.random((n, self.num_keys)), -1.0).argmax(axis=1)

        sequences = np.empty((n, seq_len), dtype=np.int64)
        sequences[:, 0:-2:2], sequences[:, 1:-2:2] = firsts, seconds
        sequences[:, -2], sequences[:, -1] = query, value_of_key[rows, query]
        answers = np.full_like(sequences, IGNORE_INDEX)
        answers[:, 1:-2:2] = np.where(recurs, values, IGNORE_INDEX)
        answers[:, -1] = sequences[:, -1]
        return next_token_example(sequences, answers, is_training)
