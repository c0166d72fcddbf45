"""Selective copying (MAD): tokens scattered among blanks, copied in order after a copy token."""

from __future__ import annotations

import numpy as np

from mixerlab.lightning_modules.tasks._base import IGNORE_INDEX, Baseline, register_task
from mixerlab.lightning_modules.tasks._loading import check_positive
from mixerlab.lightning_modules.tasks._mad import (
    MAD_BATCH_SIZE,
    MAD_NUM_TEST,
    MAD_NUM_TRAIN,
    MADTaskDataModule,
    to_ids,
)


@register_task("mad_selective_copy", task_type="lm", causal=True)
class MADSelectiveCopyDataModule(MADTaskDataModule):
    """Selective copying (MAD) - after the copy token, emit the tokens scattered among blanks.

    MAD: Poli et al. 2024, ``generate_selective_copying_instance``.

    ``num_tokens_to_copy`` tokens are drawn uniformly, with replacement, from the vocabulary
    but its two special tokens; ``seq_len - 2 * num_tokens_to_copy - 1`` blanks go in among
    them, each blank independently before one of the tokens, uniformly (so the blanks before
    each token are multinomial, and none follow the last); then come the copy token and
    ``num_tokens_to_copy`` blanks, at the i-th of which the model must emit the i-th token.
    Only those last positions are scored, in training and validation alike; every sequence is
    ``seq_len`` long. MAD ids: tokens [0, vocab_size - 2), blank vocab_size - 2, copy
    vocab_size - 1; ours are one up.

    How it differs from ``selective_copy`` (Mamba's layout): there the data tokens take a
    uniformly random set of places in a noise region, so noise may follow the last of them,
    and one marker token per token to emit follows the region, making sequences seq_len +
    num_data_tokens long. Here the blank is both the filler and the slot at which a token is
    emitted, one copy token announces the copying, the last token to copy always stands just
    before it, and the whole sequence is seq_len long. MAD draws the blanks' places from
    NumPy's global generator; here they come from the run's seed like every other draw.
    """

    def __init__(
        self,
        *,
        vocab_size: int = 16,
        seq_len: int = 256,
        num_tokens_to_copy: int = 16,
        num_train: int = MAD_NUM_TRAIN,
        num_val: int = MAD_NUM_TEST,
        batch_size: int = MAD_BATCH_SIZE,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        check_positive(
            vocab_size=vocab_size, seq_len=seq_len, num_tokens_to_copy=num_tokens_to_copy
        )
        if vocab_size < 3:
            raise ValueError(
                f"{self.name} needs vocab_size >= 3 (blank, copy and a token), got {vocab_size}"
            )
        if seq_len <= 2 * num_tokens_to_copy + 1:
            raise ValueError(
                f"seq_len={seq_len} leaves no blanks for num_tokens_to_copy={num_tokens_to_copy}; "
                f"MAD needs seq_len > 2 * num_tokens_to_copy + 1 = {2 * num_tokens_to_copy + 1}"
            )
        self.num_tokens = vocab_size - 2
        super().__init__(
            vocab_size=vocab_size,
            params={},
            settings={"seq_len": seq_len, "num_tokens_to_copy": num_tokens_to_copy},
            max_len=seq_len,
            num_train=num_train,
            num_val=num_val,
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
            cache_dir=cache_dir,
        )

    def baselines(self) -> dict[str, Baseline]:
        """A uniform guess over the tokens to copy, which are drawn uniformly."""
        return self.uniform_chance(self.num_tokens, "tokens to copy")

    def generate(
        self, rng: np.random.Generator, n: int, *, seq_len: int, num_tokens_to_copy: int
    ) -> tuple[np.ndarray, np.ndarray]:
        m, blank, copy = num_tokens_to_copy, self.num_tokens, self.num_tokens + 1
        to_copy = rng.integers(0, self.num_tokens, size=(n, m))
        # each blank goes before one of the m tokens; token i lands after the blanks before it
        before = rng.integers(0, m, size=(n, seq_len - 2 * m - 1))
        offsets = (np.arange(n)[:, None] * m + before).ravel()
        blanks_before = np.bincount(offsets, minlength=n * m).reshape(n, m)
        places = np.cumsum(blanks_before, axis=1) + np.arange(m)
        inputs = np.full((n, seq_len), blank)
        np.put_along_axis(inputs, places, to_copy, axis=1)
        inputs[:, seq_len - m - 1] = copy
        targets = np.full((n, seq_len), IGNORE_INDEX)
        targets[:, seq_len - m :] = to_copy
        return to_ids(inputs, targets)
