"""Reversal, sorting and copying: seq2seq tasks whose target is a fixed rearrangement of the
source, to tell the designs apart.

Each target token depends on the whole source (reversal: its first token is the source's last;
sorting: any source token may come first), so a causal decoder reading the source as a prefix
must hold all of it, an encoder-decoder reads it whole through cross-attention, and only copying
aligns each target token with its own source position. Sources are tokens drawn uniformly (with
repeats) from ``n_symbols`` ids; every target ends with the end token, so a model must also get
its length right.
"""

from __future__ import annotations

import numpy as np

from mixerlab.lightning_modules.tasks._base import register_task
from mixerlab.lightning_modules.tasks._seq2seq import FIRST_TOKEN_ID, Seq2SeqSyntheticDataModule


class _SymbolsDataModule(Seq2SeqSyntheticDataModule):
    """Sources of ``min_length``..``max_length`` symbols; the target is :meth:`target_of`'s."""

    def __init__(
        self,
        *,
        n_symbols: int = 10,
        min_length: int = 4,
        max_length: int = 16,
        num_train: int = 20_000,
        num_val: int = 1_000,
        batch_size: int = 64,
        layout: str = "seq2seq",
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
        fresh_every_epoch: bool = False,
    ) -> None:
        super().__init__(
            params={"n_symbols": n_symbols},
            n_tokens=n_symbols,
            min_length=min_length,
            max_length=max_length,
            max_target_length=max_length,
            num_train=num_train,
            num_val=num_val,
            batch_size=batch_size,
            layout=layout,
            seed=seed,
            num_workers=num_workers,
            cache_dir=cache_dir,
            fresh_every_epoch=fresh_every_epoch,
        )

    def draw_sources(
        self, rng: np.random.Generator, n: int, min_length: int, max_length: int
    ) -> list[np.ndarray]:
        lengths = rng.integers(min_length, max_length + 1, size=n)  # uniformly
        return [rng.integers(FIRST_TOKEN_ID, self.vocab_size, size=length) for length in lengths]


@register_task("reversal", task_type="seq2seq", causal=True)
class ReversalDataModule(_SymbolsDataModule):
    """Reversal - write the source backwards: its first target token is the source's last."""

    def target_of(self, source: np.ndarray) -> np.ndarray:
        return source[::-1]


@register_task("sorting", task_type="seq2seq", causal=True)
class SortingDataModule(_SymbolsDataModule):
    """Sorting - write the source's tokens in ascending order, repeats kept."""

    def target_of(self, source: np.ndarray) -> np.ndarray:
        return np.sort(source)


@register_task("copying", task_type="seq2seq", causal=True)
class CopyingDataModule(_SymbolsDataModule):
    """Copying - write the source again and end it where it ends (lengths vary)."""

    def target_of(self, source: np.ndarray) -> np.ndarray:
        return source
