"""Sliding-window (local) softmax attention: each query reads the keys at most ``window`` back.

Longformer (arXiv 2004.05150) and Mistral use it to bound attention's cost; Based (arXiv
2402.18668) pairs a small window with Taylor linear attention, the window giving exact local
recall and the linear attention the global view. With W = ``window``:

- decoder: out[t] attends to keys t-W .. t, W + 1 keys (its own and the W before it);
- encoder: out[t] attends to keys with |t - s| <= W, W on each side and its own (2W + 1 in all),
  so an encoder reads as far back as the decoder does and as far ahead.

W counts how far a query reads, as Zoology's ``SlidingAttn(block_size=W)`` does
(zoology/mixers/slide_attn.py masks keys s < t - W and s > t, so its query reads W + 1 keys), and
as Mistral's paper (positions i - W .. i) and flash-attn's ``window_size=(W, 0)`` (inclusive) do:
a number copied from Zoology or Based's window sweeps (8 .. 1024) means the same here, and the
decoding state is Zoology's ``state_size``, W keys and W values of d_model floats. Zoology's layer
is one head (``n_heads=1`` here) that adds -10000 to the scores outside the band where this one
leaves those keys out, has no positions of its own and no encoder form; this one reads W ahead.

Cost O(L W), not O(L^2): the sequence is cut into blocks of W queries, and block i attends to the
keys of blocks i-1 and i (decoder) or i-1 .. i+1 (encoder), the only blocks its band touches,
through one batched ``F.scaled_dot_product_attention`` call with a band mask. A sequence of at
most W + 1 positions takes SelfAttention's path, where the band covers everything. Decoding keeps
a rolling KV cache of the last W keys and values, the rest of the window being the new token; a
prompt's cache is the last W keys of one banded forward over it (``prefill``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mixerlab.mixers._contract import register_mixer
from mixerlab.mixers.attention import SelfAttention


@register_mixer("sliding_window")
class SlidingWindowAttention(SelfAttention):
    """Local softmax attention over the keys at most ``window`` positions away, O(L * window).

    SelfAttention's projections, RoPE, dropout and head merge, with attention restricted to a
    band (see the module docstring for the block layout). Padded keys are masked like
    SelfAttention's; a padded query may read any key of its band so that no row is empty.
    """

    global_mixing = False  # an encoder sees W neighbours on each side, not the whole sequence
    supports_prefix = False  # a band reads no farther back than W, a prefix reads all of it

    def __init__(
        self,
        d_model: int,
        *,
        causal: bool = True,
        max_len: int | None = None,
        n_heads: int = 4,
        window: int = 64,
        dropout: float = 0.0,
        bias: bool = True,
        rope: bool = False,
        rope_base: float = 10000.0,
    ) -> None:
        super().__init__(
            d_model,
            causal=causal,
            max_len=max_len,
            n_heads=n_heads,
            dropout=dropout,
            bias=bias,
            rope=rope,
            rope_base=rope_base,
        )
        if window < 1:
            raise ValueError(
                f"window must be at least 1, got {window}: it counts the keys a query reads "
                "before its own (keys t - window .. t), so a window of 0 mixes nothing"
            )
        self.window = window
        self.before = 1  # key blocks before a query's own block
        self.after = 0 if causal else 1  # and after it

    def _band(self, device: torch.device) -> Tensor:
        """Which keys of a block's key span each of its W queries may read: (W, K) bool.

        Query r of block i sits at t = i W + r, key j of its span at s = (i - before) W + j, so
        t - s = before W + r - j, the same for every block: allowed for 0 <= t - s <= W
        (decoder) or |t - s| <= W (encoder), which the key span of W (before + 1 + after) keys
        always contains.
        """
        w = self.window
        span = (self.before + 1 + self.after) * w
        offset = self.before * w + torch.arange(w, device=device)[:, None]
        gap = offset - torch.arange(span, device=device)[None, :]  # (W, K): t - s
        return (gap >= 0) & (gap <= w) if self.causal else gap.abs() <= w

    def _allowed(
        self, length: int, mask: Tensor | None, prefix: Tensor | None, device: torch.device
    ) -> Tensor:
        """SelfAttention's mask within the band (keys t - W .. t, or t +- W): what the blocks of
        ``_mix`` read, written as one (L, L) mask for ``mixing_map``."""
        positions = torch.arange(length, device=device)
        gap = positions[:, None] - positions[None, :]  # t - s
        band = (gap >= 0) & (gap <= self.window) if self.causal else gap.abs() <= self.window
        allowed = super()._allowed(length, mask, prefix, device)
        return band if allowed is None else allowed & band

    def _key_spans(self, t: Tensor) -> Tensor:
        """Cut (B, ..., N W, X) into each block's key span (B, ..., N, K, X), zeros outside."""
        w = self.window
        padded = F.pad(t, (0, 0, self.before * w, self.after * w))
        span = (self.before + 1 + self.after) * w
        return padded.unfold(-2, span, w).transpose(-1, -2)  # N windows of K, W apart

    def _mix(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, prefix: Tensor | None = None
    ) -> Tensor:
        """Banded attention of (B, H, L, hd) q, k, v -> (B, L, d); SelfAttention's when the band
        covers every pair, L <= W + 1. ``prefix`` is always None (``check_prefix`` refuses one:
        ``supports_prefix`` is False)."""
        batch, _, length, _ = q.shape
        w = self.window
        if length <= w + 1:
            return super()._mix(q, k, v, mask)
        n_blocks = -(-length // w)
        pad = n_blocks * w - length
        real = torch.ones(batch, length, dtype=torch.bool, device=q.device)
        real = F.pad(real if mask is None else mask, (0, pad))  # (B, N W): False past the end
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))  # (B, H, N W, hd)
        q = q.unflatten(2, (n_blocks, w)).transpose(1, 2)  # (B, N, H, W, hd)
        k, v = (self._key_spans(t).transpose(1, 2) for t in (k, v))  # (B, N, H, K, hd)
        keys_real = self._key_spans(real[..., None])[..., 0]  # (B, N, K)
        queries_real = real.view(batch, n_blocks, w)  # (B, N, W)
        allowed = self._band(q.device) & keys_real[:, :, None, :] | ~queries_real[..., None]
        # Blocks fold into the batch: SelfAttention's SDPA, head merge and output projection.
        y = self._attend(
            q.flatten(0, 1),  # (B N, H, W, hd)
            k.flatten(0, 1),
            v.flatten(0, 1),
            attn_mask=allowed.flatten(0, 1)[:, None],  # (B N, 1, W, K)
            is_causal=False,
        )  # (B N, W, d)
        return y.view(batch, n_blocks * w, self.d_model)[:, :length]

    def _cache(self, k: Tensor, v: Tensor, position: int) -> dict[str, Any]:
        """Only the last W keys and values: the next query's window is them and itself."""
        keep = max(0, k.shape[2] - self.window)
        return super()._cache(k[:, :, keep:], v[:, :, keep:], position)

    def state_size(self, seq_len: int) -> int:
        """The rolling KV cache: a key and a value for each of the last min(L, W) positions
        (Zoology's ``SlidingAttn.state_size``, 2 W d_model, once L >= W)."""
        return 2 * min(seq_len, self.window) * self.d_model

    def flops_per_token(self, seq_len: int) -> float:
        """Projections plus what the blocks compute: every query scores and weighs the whole key
        span of its block, 2 W keys (decoder) or 3 W (encoder), d multiply-adds each; a sequence
        of at most W + 1 positions costs what SelfAttention does."""
        if seq_len <= self.window + 1:
            return super().flops_per_token(seq_len)
        span = (self.before + 1 + self.after) * self.window
        return 2 * 4 * self.d_model**2 + 2 * 2 * span * self.d_model

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}"
