"""Selective copying (Mamba): copy data tokens scattered at random positions through noise."""

from __future__ import annotations

import numpy as np

from mixerlab.lightning_modules.tasks._base import IGNORE_INDEX, Baseline, register_task
from mixerlab.lightning_modules.tasks._loading import check_positive
from mixerlab.lightning_modules.tasks._synthetic import (
    Part,
    SyntheticTaskDataModule,
    sample_distinct,
)


@register_task("selective_copy", task_type="lm", causal=True)
class SelectiveCopyDataModule(SyntheticTaskDataModule):
    """Selective copying (Mamba) - emit the randomly spaced data tokens in order at the markers.

    Mamba: Gu & Dao 2023; the S4 repository's variable copying task.

    ``num_data_tokens`` data tokens sit at random positions of a region of ``seq_len`` noise
    tokens; ``num_data_tokens`` marker tokens follow, and at the i-th marker the model must emit
    the i-th data token. Only marker positions are scored. Because the spacing is random, a fixed
    (input-independent) convolution cannot solve it; the mixer must select by content.
    Ids: 0 pad, 1 noise, 2 marker, data tokens from [3, vocab_size).
    """

    NOISE_ID = 1
    MARKER_ID = 2
    FIRST_TOKEN_ID = 3

    def __init__(
        self,
        *,
        vocab_size: int = 16,
        seq_len: int = 64,
        num_data_tokens: int = 8,
        num_train: int = 20_000,
        num_val: int = 1_000,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
        fresh_every_epoch: bool = False,
    ) -> None:
        check_positive(vocab_size=vocab_size, seq_len=seq_len, num_data_tokens=num_data_tokens)
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
            fresh_every_epoch=fresh_every_epoch,
        )

    def baselines(self) -> dict[str, Baseline]:
        """A uniform guess over the data tokens, which are drawn uniformly from their ids."""
        n = self.vocab_size - self.FIRST_TOKEN_ID
        return dict.fromkeys(self.val_set_names, Baseline.uniform(n, f"the {n} data tokens"))

    def generate(
        self, rng: np.random.Generator, n: int, *, seq_len: int, num_data_tokens: int
    ) -> tuple[np.ndarray, np.ndarray]:
        m = num_data_tokens
        positions = np.sort(sample_distinct(rng, n, seq_len, m), axis=1)
        data = rng.integers(self.FIRST_TOKEN_ID, self.vocab_size, size=(n, m))
        inputs = np.full((n, seq_len + m), self.NOISE_ID)
        np.put_along_axis(inputs, positions, data, axis=1)
        inputs[:, seq_len:] = self.MARKER_ID
        targets = np.full((n, seq_len + m), IGNORE_INDEX)
        targets[:, seq_len:] = data
        return inputs, targets
