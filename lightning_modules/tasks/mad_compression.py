"""Compression (MAD): read a random sequence back out of its last position's state."""

from __future__ import annotations

import math

import numpy as np

from mixerlab.lightning_modules.tasks._base import Baseline, register_task
from mixerlab.lightning_modules.tasks._loading import check_positive
from mixerlab.lightning_modules.tasks._mad import (
    MAD_BATCH_SIZE,
    MAD_NUM_TEST,
    MAD_NUM_TRAIN,
    MADTaskDataModule,
    to_ids,
)


@register_task("mad_compression", task_type="reconstruction", causal=True)
class MADCompressionDataModule(MADTaskDataModule):
    """Compression (MAD) - reproduce every token of the sequence from its last position alone.

    MAD: Poli et al. 2024, ``generate_compression_instance``, trained with its ``AutoEncoder``.

    ``seq_len - 1`` tokens are drawn uniformly, with replacement, from the vocabulary but the
    compression token (vocab_size - 1), which ends the sequence. The target at every position
    is the sequence's own token there, the compression token included: all ``seq_len``
    positions are scored. A "reconstruction" task: the model (``readout="last_state"``, see
    :mod:`mixerlab.mixers.model.readout`) reads every target from the last position's state,
    plus a fixed code of the target's position, through a small MLP, as MAD's AutoEncoder
    does, so the token mixer must fold the whole sequence into that state. MAD's ids; ours are
    one up.
    """

    def __init__(
        self,
        *,
        vocab_size: int = 16,
        seq_len: int = 32,
        num_train: int = MAD_NUM_TRAIN,
        num_val: int = MAD_NUM_TEST,
        batch_size: int = MAD_BATCH_SIZE,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        check_positive(vocab_size=vocab_size, seq_len=seq_len)
        if vocab_size < 2 or seq_len < 2:
            raise ValueError(
                f"{self.name} needs vocab_size >= 2 and seq_len >= 2 (tokens, then the "
                f"compression token), got vocab_size={vocab_size}, seq_len={seq_len}"
            )
        self.compression_token = vocab_size - 1
        super().__init__(
            vocab_size=vocab_size,
            params={},
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
        """The answers' prior, one guess for every position: each of the ``vocab_size - 1``
        tokens with probability (L - 1) / L / (vocab_size - 1), the compression token 1 / L,
        for L = seq_len (the validation set's length)."""
        length, n_tokens = self.max_len, self.compression_token
        p_token, p_end = (length - 1) / length / n_tokens, 1 / length
        loss = -(length - 1) / length * math.log(p_token) - p_end * math.log(p_end)
        how = (
            f"a fixed guess: each of the {n_tokens} tokens {p_token:.3g}, the compression token "
            f"1/{length}"
        )
        return dict.fromkeys(self.val_set_names, Baseline("chance", loss, max(p_token, p_end), how))

    def generate(
        self, rng: np.random.Generator, n: int, *, seq_len: int
    ) -> tuple[np.ndarray, np.ndarray]:
        tokens = rng.integers(0, self.compression_token, size=(n, seq_len - 1))
        sequences = np.concatenate([tokens, np.full((n, 1), self.compression_token)], axis=1)
        return to_ids(sequences, sequences)
