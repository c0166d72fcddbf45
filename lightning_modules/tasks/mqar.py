"""Multi-query associative recall (MQAR), the Zoology benchmark of in-context recall."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from mixerlab.lightning_modules.tasks._base import IGNORE_INDEX, Baseline, register_task
from mixerlab.lightning_modules.tasks._loading import check_positive
from mixerlab.lightning_modules.tasks._synthetic import (
    Part,
    SyntheticTaskDataModule,
    sample_distinct,
)

# Zoology's MQAR at a CPU-sized scale: three numbers of key-value pairs mixed in training,
# validated at each and at twice the training length.
TRAIN_CONFIGS = tuple(
    {"seq_len": 64, "num_kv_pairs": kv, "n_examples": 10_000} for kv in (4, 8, 16)
)
TEST_CONFIGS = (
    *({"seq_len": 64, "num_kv_pairs": kv, "n_examples": 1_000} for kv in (4, 8, 16)),
    {"seq_len": 128, "num_kv_pairs": 16, "n_examples": 1_000},
)


@register_task("mqar", task_type="lm", causal=True)
class MQARDataModule(SyntheticTaskDataModule):
    """Multi-query associative recall (Zoology) - recall the value of every queried key.

    Zoology: Arora et al. 2023.

    An example opens with ``num_kv_pairs`` key-value pairs ``k1 v1 k2 v2 ...`` (distinct keys
    from one half of the vocabulary, distinct values from the other), then every key is queried
    once in the rest of the sequence. Queries sit at even offsets of that region; the gap from the
    region's start is drawn without replacement with probability proportional to
    ``gap ** (power_a - 1)`` (power_a=1: uniform; small power_a: mostly near the context, with a
    heavy tail, as repeated bigrams in text). The target at a query is the key's value; every
    other target is -100. Non-query positions hold random ordinary tokens
    (``random_non_queries``) or the filler token 1.

    ``train_configs`` is a list of ``{seq_len, num_kv_pairs, n_examples}`` mixed in training;
    with ``train_configs=None``, one configuration is given instead (``seq_len``,
    ``num_kv_pairs``, ``num_train``). ``test_configs`` (same keys) are separate validation sets
    named ``seq_len=L,kv=K``; with ``test_configs=None``, the training configurations with
    ``num_val`` examples each. The defaults are ``conf/task/mqar.yaml``'s (:data:`TRAIN_CONFIGS`,
    :data:`TEST_CONFIGS`), so ``build_task("mqar")`` and ``task=mqar`` build the same data.
    """

    FILLER_ID = 1
    FIRST_TOKEN_ID = 2
    CONFIG_KEYS: ClassVar[frozenset[str]] = frozenset({"seq_len", "num_kv_pairs", "n_examples"})

    def __init__(
        self,
        *,
        vocab_size: int = 256,
        seq_len: int | None = None,
        num_kv_pairs: int | None = None,
        num_train: int | None = None,
        num_val: int | None = None,
        train_configs: Sequence[Mapping[str, int]] | None = TRAIN_CONFIGS,
        test_configs: Sequence[Mapping[str, int]] | None = TEST_CONFIGS,
        power_a: float = 0.01,
        random_non_queries: bool = True,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
        fresh_every_epoch: bool = False,
    ) -> None:
        check_positive(vocab_size=vocab_size)
        if vocab_size < 6:
            raise ValueError(
                f"mqar needs vocab_size >= 6 (pad, filler, 2 keys, 2 values), got {vocab_size}"
            )
        if not power_a > 0:
            raise ValueError(f"power_a must be > 0 (1.0 = uniform gaps), got {power_a}")
        if train_configs is None:
            train_configs = [
                {
                    "seq_len": 64 if seq_len is None else seq_len,
                    "num_kv_pairs": 8 if num_kv_pairs is None else num_kv_pairs,
                    "n_examples": 20_000 if num_train is None else num_train,
                }
            ]
        elif seq_len is not None or num_kv_pairs is not None or num_train is not None:
            raise ValueError(
                "give either seq_len/num_kv_pairs/num_train or train_configs, not both"
            )
        train_parts = self._parse_configs(train_configs, "train_configs", vocab_size)
        if test_configs is None:
            n_val = 1_000 if num_val is None else num_val
            val_parts = [Part(p.name, n_val, p.settings) for p in train_parts]
            val_parts = list({p.name: p for p in val_parts}.values())
        elif num_val is not None:
            raise ValueError("give either num_val or test_configs (with n_examples), not both")
        else:
            val_parts = self._parse_configs(test_configs, "test_configs", vocab_size)
        self.power_a = float(power_a)
        self.random_non_queries = bool(random_non_queries)
        super().__init__(
            params={
                "vocab_size": int(vocab_size),
                "power_a": self.power_a,
                "random_non_queries": self.random_non_queries,
            },
            train_parts=train_parts,
            val_parts=val_parts,
            vocab_size=vocab_size,
            max_len=max(p.settings["seq_len"] for p in (*train_parts, *val_parts)),
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
            cache_dir=cache_dir,
            fresh_every_epoch=fresh_every_epoch,
        )

    @property
    def num_keys(self) -> int:
        """Keys are ids [2, 2 + num_keys); values are the ids above them."""
        return self._num_keys(self.vocab_size)

    @classmethod
    def _num_keys(cls, vocab_size: int) -> int:
        return (vocab_size - cls.FIRST_TOKEN_ID) // 2

    @property
    def num_values(self) -> int:
        """Values are the ids [2 + num_keys, vocab_size): every query's answer is one of them."""
        return self.vocab_size - self.FIRST_TOKEN_ID - self.num_keys

    def baselines(self) -> dict[str, Baseline]:
        """A uniform guess over the values, on every validation set: values are drawn uniformly
        (distinct within an example, which a model must learn to exploit)."""
        guess = Baseline.uniform(self.num_values, f"the {self.num_values} values")
        return dict.fromkeys(self.val_set_names, guess)

    @classmethod
    def _parse_configs(
        cls, configs: Sequence[Mapping[str, int]], what: str, vocab_size: int
    ) -> list[Part]:
        if isinstance(configs, (str, Mapping)) or not configs:
            keys = ", ".join(sorted(cls.CONFIG_KEYS))
            raise ValueError(f"{what} must be a non-empty list of {{{keys}}}")
        num_keys = cls._num_keys(vocab_size)
        parts = []
        for config in configs:
            keys = set(config)
            if keys != cls.CONFIG_KEYS:
                raise ValueError(
                    f"each entry of {what} needs exactly the keys {sorted(cls.CONFIG_KEYS)}, "
                    f"got {sorted(keys)}"
                )
            seq_len, kv, n = (int(config[k]) for k in ("seq_len", "num_kv_pairs", "n_examples"))
            check_positive(seq_len=seq_len, num_kv_pairs=kv, n_examples=n)
            if 4 * kv > seq_len:
                raise ValueError(
                    f"{what}: seq_len={seq_len} cannot hold {kv} key-value pairs and their "
                    f"queries; need seq_len >= 4 * num_kv_pairs = {4 * kv}"
                )
            if kv > num_keys:
                raise ValueError(
                    f"{what}: {kv} distinct keys need vocab_size >= {2 * kv + 2}, got {vocab_size}"
                )
            parts.append(
                Part(f"seq_len={seq_len},kv={kv}", n, {"seq_len": seq_len, "num_kv_pairs": kv})
            )
        return parts

    def generate(
        self, rng: np.random.Generator, n: int, *, seq_len: int, num_kv_pairs: int
    ) -> tuple[np.ndarray, np.ndarray]:
        k, first = num_kv_pairs, self.FIRST_TOKEN_ID
        keys = sample_distinct(rng, n, self.num_keys, k) + first
        values = sample_distinct(rng, n, self.num_values, k) + first + self.num_keys

        # Gumbel-top-k over log p: the k largest perturbed scores, in descending order, are k
        # sequential draws without replacement from p, so key j gets the j-th drawn gap.
        space = (seq_len - 2 * k) // 2
        log_p = (self.power_a - 1.0) * np.log(np.arange(1, space + 1))
        scores = log_p + rng.gumbel(size=(n, space))
        gaps = np.argsort(-scores, axis=1)[:, :k]
        query_pos = 2 * k + 2 * gaps

        if self.random_non_queries:
            inputs = rng.integers(first, self.vocab_size, size=(n, seq_len))
        else:
            inputs = np.full((n, seq_len), self.FILLER_ID)
        inputs[:, 0 : 2 * k : 2] = keys
        inputs[:, 1 : 2 * k : 2] = values
        np.put_along_axis(inputs, query_pos, keys, axis=1)
        targets = np.full((n, seq_len), IGNORE_INDEX)
        np.put_along_axis(targets, query_pos, values, axis=1)
        return inputs, targets
