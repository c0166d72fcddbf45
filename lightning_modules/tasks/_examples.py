"""A synthetic task's examples in memory: a split as padded tensors (:class:`PaddedExamples`),
and fresh training examples every epoch (:class:`FreshEpochs`, ``fresh_every_epoch``), as Mamba
trains its synthetic tasks: a dataset keyed by ``(epoch, index)``, the keys of a keyed
:class:`~mixerlab.lightning_modules.tasks._resumable.EpochShuffle`."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torch.utils.data import Dataset as TorchDataset


class PaddedExamples(TorchDataset):
    """A split held in memory as right-padded tensors; items are the unpadded examples."""

    def __init__(self, inputs: Tensor, targets: Tensor, lengths: Tensor) -> None:
        self.inputs, self.targets, self.lengths = inputs, targets, lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        n = int(self.lengths[index])
        target = self.targets[index, :n] if self.targets.dim() == 2 else self.targets[index]
        return self.inputs[index, :n], target


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
