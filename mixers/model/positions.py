"""Position representations: learned and sinusoidal absolute tables, and rotary (RoPE).

Absolute positions are added to token embeddings by the model. Rotary positions (Su et al. 2021,
arXiv 2104.09864) rotate queries and keys inside attention, so only relative offsets reach the
attention scores; mixers that take a ``rope`` hyper-parameter use :class:`Rotary`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_table(max_len: int, d_model: int) -> Tensor:
    """The fixed (max_len, d_model) table of Vaswani et al. 2017: sin on even, cos on odd."""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    inv_freq = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model)
    )
    table = torch.zeros(max_len, d_model)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq[: d_model // 2])
    return table


class Rotary(nn.Module):
    """Rotary position embedding over the last dimension (``head_dim``, even) of q and k.

    Channels are rotated in pairs (i, i + head_dim/2) by angle ``position * base^(-2i/head_dim)``.
    cos/sin are computed on the fly for the positions asked for, so any length works.
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary positions need an even head dimension, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Rotate ``q`` and ``k`` (..., L, head_dim) at integer ``positions`` (L,).

        Both share one cos/sin table, so it is computed once per call rather than per tensor.
        """
        angles = positions.to(self.inv_freq.dtype)[:, None] * self.inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos().to(q.dtype), angles.sin().to(q.dtype)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated_half = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated_half * sin
