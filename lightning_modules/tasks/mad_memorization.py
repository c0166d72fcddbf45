"""Memorization (MAD): one fixed key-value map for the whole data set; recall it from weights."""

from __future__ import annotations

import numpy as np

from mixerlab.lightning_modules.tasks._base import IGNORE_INDEX, Baseline, register_task
from mixerlab.lightning_modules.tasks._loading import check_positive
from mixerlab.lightning_modules.tasks._mad import (
    MAD_BATCH_SIZE,
    MAD_NUM_TEST,
    MADTaskDataModule,
    to_ids,
)


@register_task("mad_memorization", task_type="lm", causal=True)
class MADMemorizationDataModule(MADTaskDataModule):
    """Memorization (MAD) - after each key, emit its value in a fixed map: facts, not context.

    MAD: Poli et al. 2024, ``generate_memorization_instance`` with ``generate_kv_map``.

    One map, drawn once from the run's seed and shared by every training and validation
    example, sends each key of [0, h) to a distinct value of [h, vocab_size - 1), h =
    (vocab_size - 1) // 2 (MAD's keys and values, shuffled and paired; one value is left over).
    A sequence is ``seq_len / 2`` pairs ``key insert``, keys drawn uniformly with replacement,
    and at each insert token (vocab_size - 1) the model must emit the key's value. Only those
    places are scored, in training and validation alike. No sequence ever shows a value, so the
    map can only be learnt into the weights: MAD trains on 256 sequences (``num_train``) and
    varies ``vocab_size`` (512 to 8192). MAD's ids; ours are one up.
    """

    def __init__(
        self,
        *,
        vocab_size: int = 256,
        seq_len: int = 32,
        num_train: int = 256,
        num_val: int = MAD_NUM_TEST,
        batch_size: int = MAD_BATCH_SIZE,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        check_positive(vocab_size=vocab_size, seq_len=seq_len)
        if vocab_size < 3:
            raise ValueError(
                f"{self.name} needs vocab_size >= 3 (a key, a value, the insert token), "
                f"got {vocab_size}"
            )
        if seq_len % 2:
            raise ValueError(f"{self.name} needs an even seq_len (key-insert pairs), got {seq_len}")
        self.num_keys = (vocab_size - 1) // 2
        self.insert_token = vocab_size - 1
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

    def facts(self) -> np.ndarray:
        """The fixed map in MAD's ids: ``facts()[key]`` is the key's value. Drawn from the
        run's seed alone, so every split and every call sees the same map."""
        num_values = self.insert_token - self.num_keys
        return self.shared_rng().permutation(num_values)[: self.num_keys] + self.num_keys

    def baselines(self) -> dict[str, Baseline]:
        """A uniform guess over the values the keys map to: keys are drawn uniformly and the
        map is one to one."""
        return self.uniform_chance(self.num_keys, "values the keys map to")

    def generate(
        self, rng: np.random.Generator, n: int, *, seq_len: int
    ) -> tuple[np.ndarray, np.ndarray]:
        keys = rng.integers(0, self.num_keys, size=(n, seq_len // 2))
        inputs = np.full((n, seq_len), self.insert_token)
        inputs[:, 0::2] = keys
        targets = np.full((n, seq_len), IGNORE_INDEX)
        targets[:, 1::2] = self.facts()[keys]
        return to_ids(inputs, targets)
