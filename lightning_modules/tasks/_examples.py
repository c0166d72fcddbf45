"""A synthetic task's examples in memory: a split as padded tensors (:class:`PaddedExamples`),
and fresh training examples every epoch (:class:`FreshEpochs`, ``fresh_every_epoch``), as Mamba
trains its synthetic tasks: a dataset keyed by ``(epoch, index)``, the keys of a keyed
:class:`~mixerlab.lightning_modules.tasks._resumable.EpochShuffle`."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torch.utils.data import Dataset as TorchDataset


class PaddedExamples(TorchDataset):
    """A split held in memory as right-padded tensors; items are the unpadded examples.

    Per-position targets are as long as their inputs unless ``target_lengths`` says otherwise
    (a seq2seq target); a 1-d ``targets`` holds one label per example."""

    def __init__(
        self,
        inputs: Tensor,
        targets: Tensor,
        lengths: Tensor,
        target_lengths: Tensor | None = None,
    ) -> None:
        self.inputs, self.targets, self.lengths = inputs, targets, lengths
        self.target_lengths = lengths if target_lengths is None else target_lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        n = int(self.lengths[index])
        if self.targets.dim() == 1:
            return self.inputs[index, :n], self.targets[index]
        return self.inputs[index, :n], self.targets[index, : int(self.target_lengths[index])]


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
