"""The bare training step every benchmark times: one PyTorch step on a batch of token ids, with no
Lightning around it, so that the benchmarks' numbers mean the same thing."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Tensor,
    autocast: torch.dtype | None = None,
) -> Tensor:
    """Next-token prediction on ``batch`` (B, L + 1): forward (under autocast to ``autocast``
    when given), cross-entropy on the logits in fp32, backward and the optimiser's step. Returns
    the loss, for a caller that checks it."""
    inputs, targets = batch[:, :-1], batch[:, 1:]
    mixed = torch.autocast(batch.device.type, dtype=autocast) if autocast else None
    with mixed or contextlib.nullcontext():
        logits = model(inputs)
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss
