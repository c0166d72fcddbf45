"""Induction heads (Mamba): recall the token that followed a trigger's first occurrence."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mixerlab.lightning_modules.tasks._base import IGNORE_INDEX, Baseline, register_task
from mixerlab.lightning_modules.tasks._loading import check_positive
from mixerlab.lightning_modules.tasks._synthetic import Part, SyntheticTaskDataModule


@register_task("induction_heads", task_type="lm", causal=True)
class InductionHeadsDataModule(SyntheticTaskDataModule):
    """Induction heads (Mamba) - at the trigger's repeat, recall the token that followed it before.

    Olsson et al. 2022; as in Mamba, Gu & Dao 2023.

    A random sequence holds a trigger token once, followed by a target token, and ends with the
    trigger again: at the last position the model must recall the token that followed the first
    trigger. Only the last position is scored. ``test_seq_lens`` are the validation sets'
    lengths (named ``seq_len=L``), to measure length extrapolation; None validates at
    ``seq_len`` alone.
    Ids: 0 pad, 1 trigger, ordinary tokens from [2, vocab_size).
    """

    TRIGGER_ID = 1
    FIRST_TOKEN_ID = 2

    def __init__(
        self,
        *,
        vocab_size: int = 16,
        seq_len: int = 64,
        test_seq_lens: Sequence[int] | None = (64, 128, 256),
        num_train: int = 20_000,
        num_val: int = 500,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
        fresh_every_epoch: bool = False,
    ) -> None:
        check_positive(vocab_size=vocab_size, seq_len=seq_len)
        if vocab_size <= self.FIRST_TOKEN_ID:
            raise ValueError(
                f"induction_heads needs vocab_size >= 3 (2 special ids), got {vocab_size}"
            )
        lengths = [seq_len] if test_seq_lens is None else [int(x) for x in test_seq_lens]
        if not lengths or min([*lengths, seq_len]) < 3:
            raise ValueError(
                f"induction_heads needs sequences of length >= 3 and a non-empty test_seq_lens, "
                f"got seq_len={seq_len}, test_seq_lens={test_seq_lens}"
            )
        super().__init__(
            params={"vocab_size": vocab_size},
            train_parts=[Part("train", num_train, {"seq_len": seq_len})],
            val_parts=[Part(f"seq_len={n}", num_val, {"seq_len": n}) for n in lengths],
            vocab_size=vocab_size,
            max_len=max([seq_len, *lengths]),
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
            cache_dir=cache_dir,
            fresh_every_epoch=fresh_every_epoch,
        )

    def baselines(self) -> dict[str, Baseline]:
        """A uniform guess over the ordinary tokens, from which the token after the trigger is
        drawn uniformly, on every validation length."""
        n = self.vocab_size - self.FIRST_TOKEN_ID
        return dict.fromkeys(self.val_set_names, Baseline.uniform(n, f"the {n} ordinary tokens"))

    def generate(
        self, rng: np.random.Generator, n: int, *, seq_len: int
    ) -> tuple[np.ndarray, np.ndarray]:
        inputs = rng.integers(self.FIRST_TOKEN_ID, self.vocab_size, size=(n, seq_len))
        trigger_pos = rng.integers(0, seq_len - 2, size=n)  # its target is at most at seq_len - 2
        rows = np.arange(n)
        inputs[rows, trigger_pos] = self.TRIGGER_ID
        inputs[:, -1] = self.TRIGGER_ID
        targets = np.full((n, seq_len), IGNORE_INDEX)
        targets[:, -1] = inputs[rows, trigger_pos + 1]
        return inputs, targets
