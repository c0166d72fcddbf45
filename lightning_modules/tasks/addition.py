"""Multi-digit addition: read ``a + b`` and write the sum, carries included."""

from __future__ import annotations

import numpy as np

from mixerlab.lightning_modules.tasks._base import register_task
from mixerlab.lightning_modules.tasks._seq2seq import FIRST_TOKEN_ID, Seq2SeqSyntheticDataModule

PLUS_ID = FIRST_TOKEN_ID
DIGIT_ID = PLUS_ID + 1  # digits 0-9 from here


@register_task("addition", task_type="seq2seq", causal=True)
class AdditionDataModule(Seq2SeqSyntheticDataModule):
    """Addition - the digits of a + b from the source ``a + b``, most significant first.

    Each operand has ``min_length``..``max_length`` digits (drawn uniformly per operand, then
    the number uniformly among those of that many digits), so the sum has up to
    ``max_length + 1``. Written most significant
    digit first, as people write it, each sum digit depends on a carry from the digits to its
    right: a decoder cannot emit it from the aligned operand digits alone.
    Ids: 0 pad, 1 start, 2 end, 3 ``+``, 4-13 the digits 0-9.
    """

    def __init__(
        self,
        *,
        min_length: int = 1,
        max_length: int = 6,
        num_train: int = 20_000,
        num_val: int = 1_000,
        batch_size: int = 64,
        layout: str = "seq2seq",
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
        fresh_every_epoch: bool = False,
    ) -> None:
        if max_length > 18:
            raise ValueError(
                f"addition: max_length={max_length} digits overflow 64-bit integers; give "
                "max_length <= 18"
            )
        super().__init__(
            params={},
            n_tokens=1 + 10,
            min_length=min_length,
            max_length=max_length,
            max_target_length=max_length + 1,
            num_train=num_train,
            num_val=num_val,
            batch_size=batch_size,
            layout=layout,
            seed=seed,
            num_workers=num_workers,
            cache_dir=cache_dir,
            fresh_every_epoch=fresh_every_epoch,
        )

    def source_length(self, length: int) -> int:
        return 2 * length + 1  # two operands and the plus

    def draw_sources(
        self, rng: np.random.Generator, n: int, min_length: int, max_length: int
    ) -> list[np.ndarray]:
        lengths = rng.integers(min_length, max_length + 1, size=(n, 2))  # per operand, uniformly
        return [
            np.concatenate([_digits(_number(rng, a)), [PLUS_ID], _digits(_number(rng, b))])
            for a, b in lengths
        ]

    def target_of(self, source: np.ndarray) -> np.ndarray:
        plus = int(np.flatnonzero(source == PLUS_ID)[0])
        return _digits(_value(source[:plus]) + _value(source[plus + 1 :]))


def _number(rng: np.random.Generator, n_digits: int) -> int:
    """A number of exactly ``n_digits`` digits, uniformly (0 to 9 for one digit)."""
    low = 0 if n_digits == 1 else 10 ** (int(n_digits) - 1)
    return int(rng.integers(low, 10 ** int(n_digits)))


def _digits(number: int) -> np.ndarray:
    return np.array([DIGIT_ID + int(c) for c in str(number)], dtype=np.int64)


def _value(digit_ids: np.ndarray) -> int:
    return int("".join(str(int(d) - DIGIT_ID) for d in digit_ids))
