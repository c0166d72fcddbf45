"""Multi-head self-attention (Vaswani et al. 2017) on PyTorch's fused SDPA kernel.

Causal attention without padding takes SDPA's ``is_causal=True`` path, which never materialises an
(L, L) mask; only batches with padding pay for an explicit boolean mask. Decoding keeps a KV cache.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixerlab.mixers._contract import TokenMixer, register_mixer
from mixerlab.mixers.mixing_map import MixingMap
from mixerlab.mixers.model.positions import Rotary


def allowed_keys(
    length: int,
    *,
    causal: bool,
    mask: Tensor | None = None,
    prefix: Tensor | None = None,
    device: torch.device | None = None,
) -> Tensor | None:
    """The boolean SDPA mask (B or 1, 1, L, L): ``allowed[b, 0, i, j]`` says whether query i may
    read key j; None when every query reads every key. Keys are real ones only (``mask``, right
    padding), and if causal j <= i or j < prefix[b] (a bidirectional prefix). A padded query may
    read every key: its output is unused, and a row with no allowed key (a sequence with no real
    token) would make softmax produce NaN."""
    keys = torch.arange(length, device=device if mask is None else mask.device)
    allowed = None
    if causal:
        allowed = (keys[None, :] <= keys[:, None])[None, None]
        if prefix is not None:
            allowed = allowed | (keys < prefix[:, None])[:, None, None, :]
    if mask is not None:
        real_keys = mask[:, None, None, :]
        allowed = real_keys if allowed is None else allowed & real_keys
        allowed = allowed | ~mask[:, None, :, None]
    return allowed


@register_mixer("attention")
class SelfAttention(TokenMixer):
    """Multi-head scaled dot-product self-attention, optionally with rotary positions (RoPE).

    One fused Linear makes q, k and v (one matmul instead of three), heads attend through
    ``F.scaled_dot_product_attention``, and an output Linear mixes the heads back together.
    ``dropout`` drops attention weights in training only; ``rope`` rotates q and k by their
    absolute position so that the scores depend on relative offsets. Initialisation: PyTorch's
    Linear defaults (x-transformers keeps them too).
    """

    supports_step = True
    supports_prefix = True

    def __init__(
        self,
        d_model: int,
        *,
        causal: bool = True,
        max_len: int | None = None,
        n_heads: int = 4,
        dropout: float = 0.0,
        bias: bool = True,
        rope: bool = False,
        rope_base: float = 10000.0,
    ) -> None:
        super().__init__(d_model, causal=causal, max_len=max_len)
        if n_heads <= 0 or d_model % n_heads:
            raise ValueError(
                f"d_model {d_model} must be divisible by n_heads {n_heads}; "
                "pick n_heads from the divisors of d_model"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"attention dropout must be in [0, 1), got {dropout}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)
        self.rotary = Rotary(self.head_dim, base=rope_base) if rope else None

    def _qkv(self, x: Tensor, start: int) -> tuple[Tensor, Tensor, Tensor]:
        """Project x (B, L, d) to q, k, v of shape (B, n_heads, L, head_dim), rotated if rope.

        ``start`` is the absolute position of x[:, 0], so decoding rotates at the right angle.
        """
        batch, length, _ = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # strided views, no copy
        if self.rotary is not None:
            positions = torch.arange(start, start + length, device=x.device)
            q, k = self.rotary(q, k, positions)
        return q, k, v

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool
    ) -> Tensor:
        """SDPA over heads, then merge heads (B, n_heads, L, head_dim) -> (B, L, d) and project."""
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )
        batch, _, length, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(batch, length, self.d_model))

    def _mix(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, prefix: Tensor | None = None
    ) -> Tensor:
        """Attention of (B, n_heads, L, head_dim) q, k, v under the padding mask and the causal
        mask or its bidirectional ``prefix`` -> (B, L, d)."""
        # A mask without padding takes the fused path too (costs one host sync on GPU).
        if prefix is None and (mask is None or bool(mask.all())):
            return self._attend(q, k, v, attn_mask=None, is_causal=self.causal)
        allowed = self._allowed(q.shape[2], mask, prefix, q.device)
        return self._attend(q, k, v, attn_mask=allowed, is_causal=False)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, prefix: Tensor | None = None
    ) -> Tensor:
        self.check_input(x, mask)
        self.check_prefix(x, prefix)
        return self._mix(*self._qkv(x, start=0), mask, prefix)

    def _allowed(
        self, length: int, mask: Tensor | None, prefix: Tensor | None, device: torch.device
    ) -> Tensor | None:
        """Which keys each query reads, (B or 1, 1, L, L) bool, as ``forward`` masks them; None:
        every key."""
        return allowed_keys(length, causal=self.causal, mask=mask, prefix=prefix, device=device)

    def mixing_map(
        self, x: Tensor, mask: Tensor | None = None, prefix: Tensor | None = None
    ) -> MixingMap:
        """Each head's softmax weights (eval mode: no dropout), written out rather than fused:
        ``softmax(q k^T / sqrt(head_dim))`` under the causal (or prefix) and padding masks, over
        v."""
        self.check_input(x, mask)
        self.check_prefix(x, prefix)
        batch, length, _ = x.shape
        q, k, v = self._qkv(x, start=0)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        allowed = self._allowed(length, mask, prefix, x.device)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, -math.inf)

        def finish(mixed: Tensor) -> Tensor:
            return self.out(mixed.transpose(1, 2).reshape(batch, length, self.d_model))

        return MixingMap(scores.softmax(dim=-1), v, finish, "heads")

    def _cache(self, k: Tensor, v: Tensor, position: int) -> dict[str, Any]:
        """The decoding state: every key and value so far (B, n_heads, position, head_dim).
        Contiguous copies, so that a prefilled cache does not keep the fused qkv alive."""
        return {"k": k.contiguous(), "v": v.contiguous(), "position": position}

    def prefill(self, x: Tensor, prefix: Tensor | None = None) -> tuple[Tensor, dict[str, Any]]:
        """One forward over the prompt (its first ``prefix`` positions bidirectional, if given);
        its keys and values are the KV cache."""
        self.check_prefill(x)
        self.check_prefix(x, prefix)
        q, k, v = self._qkv(x, start=0)
        return self._mix(q, k, v, None, prefix), self._cache(k, v, x.shape[1])

    def init_state(self, batch_size: int) -> dict[str, Any]:
        """An empty KV cache: keys and values (B, n_heads, 0, head_dim) and the position."""
        weight = self.qkv.weight
        empty = weight.new_zeros(batch_size, self.n_heads, 0, self.head_dim)
        return {"k": empty, "v": empty, "position": 0}

    def step(self, x_t: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """Attend from the new token to every cached key and itself (no mask needed)."""
        position = state["position"]
        self.check_step(position)
        q, k, v = self._qkv(x_t[:, None, :], start=position)
        k = torch.cat((state["k"], k), dim=2)
        v = torch.cat((state["v"], v), dim=2)
        y = self._attend(q, k, v, attn_mask=None, is_causal=False)
        return y[:, 0], self._cache(k, v, position + 1)

    def state_size(self, seq_len: int) -> int:
        """The KV cache: a key and a value of d_model floats for every past position."""
        return 2 * seq_len * self.n_heads * self.head_dim

    def output_projections(self) -> list[nn.Linear]:
        return [self.out]

    def flops_per_token(self, seq_len: int) -> float:
        """q, k, v and output projections (4 d^2 multiply-adds) plus scores and weighted sum.

        The scores q.k and the weighted sum of values cost d multiply-adds per attended key each.
        A causal token attends to (t + 1) keys, on average about seq_len / 2, so the sequence
        term is halved for causal attention (which is what the fused causal kernel computes).
        """
        attended = seq_len / 2 if self.causal else seq_len
        return 2 * 4 * self.d_model**2 + 2 * 2 * attended * self.d_model

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, n_heads={self.n_heads}, dropout={self.dropout}, "
            f"rope={self.rotary is not None}"
        )
