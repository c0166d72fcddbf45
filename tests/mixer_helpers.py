"""What the mixer tests share: seeded inputs and mixers, and the reference computations written
out plainly (by ``F.conv1d``, one position at a time) that fast forms are compared against."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mixerlab.mixers import TokenMixer, build_mixer


def randn(*shape: int, seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def seeded_mixer(
    name: str, d_model: int, *, causal: bool = True, max_len: int | None = None, **hparams: Any
) -> TokenMixer:
    """The registered mixer built right after ``torch.manual_seed(0)``, in eval mode."""
    torch.manual_seed(0)
    return build_mixer(name, d_model, causal=causal, max_len=max_len, **hparams).eval()


def conv1d_reference(u: Tensor, kernel: Tensor, causal: bool) -> Tensor:
    """y[t] = sum_s kernel[:, s] u[:, :, t - s] on u (B, C, L) by zero-padded F.conv1d (which
    correlates: flip the kernel)."""
    length = u.shape[-1]
    padding = (length - 1, 0) if causal else (length - 1, length - 1)
    weight = kernel.flip(-1)[:, None, :]  # (C, 1, K), oldest offset first
    return F.conv1d(F.pad(u, padding), weight, groups=u.shape[1])


def naive_scan(x, dt, A, B, C, h):
    """The selective recurrence, one position at a time."""
    ys = []
    for t in range(x.shape[1]):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[..., None] * B[:, t, None]
        ys.append((h * C[:, t, None]).sum(-1))
    return torch.stack(ys, dim=1), h
