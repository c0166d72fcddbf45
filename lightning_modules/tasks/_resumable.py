"""The training data order, made resumable mid-epoch.

A run killed in the middle of an epoch resumes from its newest checkpoint; to end exactly where
the uninterrupted run ends it must go on with the very batch that run took next, not restart the
epoch. Two parts make that possible:

- :class:`EpochShuffle` draws each epoch's order from ``(seed, epoch)`` alone, so any epoch's
  order can be recomputed without replaying the earlier ones, and can skip the examples an
  interrupted epoch already used without loading them.
- :class:`ResumableLoader` counts the batches it has yielded and offers ``state_dict`` /
  ``load_state_dict``, which Lightning (>= 2.3) saves in every checkpoint and restores on resume
  for any training loader that has them.

Lightning calls ``set_epoch`` at each epoch start, as for PyTorch's DistributedSampler.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler


class EpochShuffle(DistributedSampler):
    """This process's share of one epoch's shuffled order of the training examples.

    Epoch ``e`` is a permutation drawn from a generator seeded through NumPy's SeedSequence from
    ``(seed, e)``: a pure function of the two, where ``seed + e`` (DistributedSampler's key)
    would give seed 1 the second epoch of seed 0. ``skip`` examples of the next pass are left
    out (a restored position; it applies once, and a new epoch clears it).

    A DistributedSampler so that Lightning keeps it under DDP instead of swapping in its own:
    rank ``r`` of ``n`` takes every ``n``-th example of the one order from the ``r``-th, the order
    padded by its first examples to an equal count per rank, as DistributedSampler pads.

    ``keyed=True`` yields ``(epoch, index)`` keys instead of indices, for datasets whose examples
    change with the epoch (fresh examples, new masks): the epoch travels inside each key into
    worker processes, which a dataset attribute set in the main process would not reach. Being
    this same sampler, it keeps the DDP split and the resumable position of the plain one.
    """

    def __init__(
        self,
        dataset: Sized,
        seed: int,
        *,
        keyed: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        """``num_replicas`` and ``rank`` default to the process group's, or 1 and 0 without one."""
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(
            dataset,  # type: ignore[arg-type]  # any sized dataset
            num_replicas=num_replicas or (dist.get_world_size() if distributed else 1),
            rank=rank if rank is not None else (dist.get_rank() if distributed else 0),
            shuffle=True,
            seed=seed,
        )
        self.skip = 0
        self.keyed = keyed

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip = 0
        super().set_epoch(epoch)

    def order(self) -> torch.Tensor:
        """The whole epoch's order of example indices, before it is shared out, (n,) long."""
        key = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0]
        generator = torch.Generator().manual_seed(int(key))
        return torch.randperm(len(self.dataset), generator=generator)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        order = self.order()
        padding = self.total_size - len(order)
        if padding > 0:
            order = torch.cat([order, order.repeat(math.ceil(padding / len(order)))[:padding]])
        skip, self.skip = self.skip, 0
        indices = order[self.rank : self.total_size : self.num_replicas][skip:].tolist()
        if self.keyed:
            epoch = self.epoch
            return ((epoch, index) for index in indices)
        return iter(indices)


class ResumableLoader(DataLoader):
    """A training DataLoader whose position goes into checkpoints; its sampler is an
    :class:`EpochShuffle`.

    The state is the epoch and the number of its batches yielded so far; an epoch used up is
    saved as the next epoch's start, the batch the run takes next either way. Restoring it makes
    the next pass skip those batches (their examples are never loaded), so a resumed run sees the
    batches the uninterrupted run saw, in the same order. Batches are counted as they leave the
    loader, not as workers fetch them ahead, and Lightning fetches no batch ahead of the one it
    trains on when, as here, the loader has a length.
    """

    _batches = 0  # batches of the epoch yielded so far

    @property
    def order(self) -> EpochShuffle:
        if not isinstance(self.sampler, EpochShuffle):
            raise TypeError(f"ResumableLoader needs an EpochShuffle order, got {self.sampler!r}")
        return self.sampler

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        self._batches = self.order.skip // self.batch_size
        for batch in super().__iter__():
            self._batches += 1  # counted before the consumer gets it: a save then includes it
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Where the next batch comes from: ``{"epoch": e, "batches": yielded in e}``."""
        if self._batches >= len(self):
            return {"epoch": self.order.epoch + 1, "batches": 0}
        return {"epoch": self.order.epoch, "batches": self._batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue at ``state`` (from :meth:`state_dict`, with the same batch size)."""
        self.order.set_epoch(state["epoch"])
        self.order.skip = state["batches"] * self.batch_size
        self._batches = state["batches"]
