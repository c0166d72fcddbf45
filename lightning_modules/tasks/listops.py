"""ListOps (Long Range Arena): the value of a nested list expression, a classification task."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from mixerlab.lightning_modules.tasks._base import PAD_ID, Baseline, register_task
from mixerlab.lightning_modules.tasks._loading import check_positive
from mixerlab.lightning_modules.tasks._synthetic import Part, SyntheticTaskDataModule

LISTOPS_TOKENS = ("<pad>", *"0123456789", "[MAX", "[MIN", "[MED", "[SM", "]")
_DIGIT_ID = LISTOPS_TOKENS.index("0")
_OP_ID = LISTOPS_TOKENS.index("[MAX")
_CLOSE_ID = LISTOPS_TOKENS.index("]")


def listops_decode(tokens: Sequence[int]) -> str:
    """ListOps token ids as the LRA text form, e.g. ``[MAX 2 [MIN 4 7 ] 0 ]`` (padding dropped)."""
    return " ".join(LISTOPS_TOKENS[int(t)] for t in tokens if int(t) != PAD_ID)


def _listops_apply(op: int, args: list[int]) -> int:
    """MAX, MIN, MED (``int(median)``, as LRA) and SM (sum modulo 10), in LRA's token order."""
    if op == 0:
        return max(args)
    if op == 1:
        return min(args)
    if op == 2:
        ordered = sorted(args)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) // 2
    return sum(args) % 10


@register_task("listops", task_type="classification", causal=False)
class ListOpsDataModule(SyntheticTaskDataModule):
    """ListOps (LRA) - classify the value 0-9 of a nested MAX/MIN/MED/SUM_MOD expression.

    Nangia & Bowman 2018, as in Long Range Arena.

    Expressions like ``[MAX 2 9 [MIN 4 7 ] 0 ]`` over the digits 0-9 with the operators MAX,
    MIN, MED and SM (sum mod 10); the label is the value (10 classes). The root is an operator;
    below it an argument is a digit with probability ``leaf_prob`` (always below ``max_depth``
    nested operators), else a nested expression with 2..``max_args`` arguments. Expressions
    outside [``min_length``, ``max_length``] tokens are redrawn. An encoder task (registered
    ``causal=False``). Ids: 0 pad, digits 1-10, operators 11-14, ``]`` 15.
    """

    MAX_TRIES = 10_000

    def __init__(
        self,
        *,
        max_depth: int = 4,
        max_args: int = 5,
        leaf_prob: float = 0.6,
        min_length: int = 16,
        max_length: int = 128,
        num_train: int = 20_000,
        num_val: int = 1_000,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
        fresh_every_epoch: bool = False,
    ) -> None:
        check_positive(max_depth=max_depth, max_args=max_args, max_length=max_length)
        if max_args < 2:
            raise ValueError(f"max_args must be >= 2 (operators take 2..max_args), got {max_args}")
        if not 0.0 <= leaf_prob <= 1.0:
            raise ValueError(f"leaf_prob must lie in [0, 1], got {leaf_prob}")
        if not 4 <= min_length <= max_length:
            raise ValueError(
                f"need 4 <= min_length <= max_length (the shortest expression is 4 tokens), "
                f"got min_length={min_length}, max_length={max_length}"
            )
        params = {
            "max_depth": max_depth,
            "max_args": max_args,
            "leaf_prob": float(leaf_prob),
            "min_length": min_length,
            "max_length": max_length,
        }
        self.max_depth, self.max_args, self.leaf_prob = max_depth, max_args, float(leaf_prob)
        self.min_length, self.max_length = min_length, max_length
        super().__init__(
            params=params,
            train_parts=[Part("train", num_train)],
            val_parts=[Part("val", num_val)],
            vocab_size=len(LISTOPS_TOKENS),
            max_len=max_length,
            num_classes=10,
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
            cache_dir=cache_dir,
            fresh_every_epoch=fresh_every_epoch,
        )

    def baselines(self) -> dict[str, Baseline]:
        """The validation set's own label frequencies: always answering its majority class is
        the best any classifier that ignores the expression can score there (at least 1/10;
        how far above depends on max_depth, max_args and leaf_prob)."""
        if not self._vals:
            raise RuntimeError("listops baselines come from the data: call setup() first")
        baselines = {}
        for name, examples in zip(self.val_set_names, self._vals, strict=True):
            counts = np.bincount(examples.targets.numpy(), minlength=self.num_classes)
            how = f"the set's label frequencies (majority class {int(counts.argmax())})"
            baselines[name] = Baseline.prior("chance", counts, counts, how)
        return baselines

    def _expression(self, rnd: random.Random, depth: int, out: list[int]) -> int:
        """Append one expression's tokens to ``out``; return its value."""
        if depth > 1 and (depth > self.max_depth or rnd.random() < self.leaf_prob):
            digit = rnd.randrange(10)
            out.append(_DIGIT_ID + digit)
            return digit
        op = rnd.randrange(4)
        out.append(_OP_ID + op)
        args = [self._expression(rnd, depth + 1, out) for _ in range(rnd.randint(2, self.max_args))]
        out.append(_CLOSE_ID)
        return _listops_apply(op, args)

    def generate(self, rng: np.random.Generator, n: int) -> tuple[list[np.ndarray], np.ndarray]:
        # Trees are recursive, so they are drawn in Python, from a stream seeded by ``rng``.
        rnd = random.Random(int(rng.integers(2**63)))
        inputs, labels = [], np.empty(n, dtype=np.int64)
        for i in range(n):
            for _ in range(self.MAX_TRIES):
                tokens: list[int] = []
                value = self._expression(rnd, 1, tokens)
                if self.min_length <= len(tokens) <= self.max_length:
                    break
            else:
                raise ValueError(
                    f"listops drew no expression of {self.min_length}..{self.max_length} tokens "
                    f"in {self.MAX_TRIES} tries; widen the range or change max_depth/max_args/"
                    "leaf_prob"
                )
            inputs.append(np.asarray(tokens))
            labels[i] = value
        return inputs, labels
