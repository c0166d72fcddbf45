"""Fresh training examples every epoch (``fresh_every_epoch``), as Mamba trains its synthetic
tasks: a dataset keyed by ``(epoch, index)`` and the sampler that makes those keys."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from torch import Tensor
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Sampler

if TYPE_CHECKING:
    from lightning_modules.tasks.synthetic import PaddedExamples


class EpochKeys(Sampler[tuple[int, int]]):
    """Another sampler's order as ``(epoch, index)`` keys, for :class:`FreshEpochs`.

    Lightning calls ``set_epoch`` on a training loader's sampler at the start of every epoch,
    with the epoch it restored on resume; passing the epoch inside each key carries it into
    worker processes too, which a dataset attribute set in the main process would not reach.
    The wrapped order (and its own ``set_epoch``, if it has one) is left as it is.
    """

    def __init__(self, order: Sampler[int]) -> None:
        self.order = order
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if callable(set_order_epoch := getattr(self.order, "set_epoch", None)):
            set_order_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, int(index)) for index in self.order)

    def __len__(self) -> int:
        return len(self.order)  # type: ignore[arg-type]


class FreshEpochs(TorchDataset):
    """Training examples drawn anew for every epoch, looked up by ``(epoch, index)`` keys.

    Epoch 0 is ``first`` (the cached split); a key of another epoch replaces the epoch held by
    ``draw(epoch)``, so memory stays at one epoch's examples however long the run.
    """

    def __init__(self, first: PaddedExamples, draw: Callable[[int], PaddedExamples]) -> None:
        self.first, self.draw = first, draw
        self.epoch, self.examples = 0, first

    def __len__(self) -> int:
        return len(self.first)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        epoch, index = key
        if epoch != self.epoch:
            self.epoch, self.examples = epoch, self.first if epoch == 0 else self.draw(epoch)
        return self.examples[index]
