"""Fresh training examples every epoch (``fresh_every_epoch``), as Mamba trains its synthetic
tasks: a dataset keyed by ``(epoch, index)``, the keys of a keyed
:class:`~mixerlab.lightning_modules.tasks.resumable.EpochShuffle`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import Tensor
from torch.utils.data import Dataset as TorchDataset

if TYPE_CHECKING:
    from mixerlab.lightning_modules.tasks.synthetic import PaddedExamples


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
