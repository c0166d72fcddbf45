"""Causal linear attention in chunks: o_t = sum_{s<=t} (q_t * decay(s..t)) . k_s v_s without a
loop over positions, for :mod:`mixerlab.mixers.linear_attention`.

The sequence is cut into chunks of C positions. Within a chunk the (C x C) masked product of
scores and decays is computed in parallel (the "attention form"); across chunks the state
entering each chunk is carried by a loop over chunks, never over positions. Decays live in log
space: with b_t the within-chunk cumulative sum of log alpha, every factor used is exp of a
non-positive number (b_t - b_s for s <= t, b_t, b_last - b_s), so a strong decay underflows to 0
instead of overflowing. Per-key-dimension (gated) decay needs pairwise decays (C x C x Dphi); as
in GLA's secondary chunking (arXiv 2312.06635), a chunk longer than :data:`SUB_CHUNK` runs the
same chunked form over sub-chunks of that length, which keeps them at (8 x 8 x Dphi) per
sub-chunk (GLA uses 16, a GPU tile; 8 measured faster on CPU in pure PyTorch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

SUB_CHUNK = 8  # longest run of pairwise (per-dimension) decays, as in GLA's secondary chunks


def decayed_scores(q: Tensor, k: Tensor, b: Tensor, causal: Tensor) -> Tensor:
    """Within-chunk scores sum_d q_t[d] k_s[d] exp(b_t[d] - b_s[d]) for s <= t, 0 above.

    q, k: (..., C, Dphi); b: (..., C, 1) for one decay per head or (..., C, Dphi) per dimension;
    causal: (C, C) bool lower triangle. The mask is applied before exp, so the positive gaps
    above the diagonal never reach exp.
    """
    if b.shape[-1] == 1:
        gap = b - b.mT  # (..., C, C): b_t - b_s
        return (q @ k.mT) * gap.masked_fill(~causal, -math.inf).exp()
    gap = b[..., :, None, :] - b[..., None, :, :]  # (..., C, C, Dphi)
    decay = gap.masked_fill(~causal[..., None], -math.inf).exp()
    return (q[..., :, None, :] * decay * k[..., None, :, :]).sum(dim=-1)


def chunked_causal(
    q: Tensor, k: Tensor, v: Tensor, log_alpha: Tensor | None, chunk_size: int
) -> tuple[Tensor, Tensor]:
    """o_t = sum_{s<=t} (q_t * prod_{r=s+1..t} alpha_r) . k_s v_s, chunk by chunk, and the state
    S_L = sum_s (prod_{r=s+1..L} alpha_r) k_s v_s^T after the last position (a prefill's state).

    q, k: (..., L, Dphi) features; v: (..., L, Dv); log_alpha: None (no decay) or
    (..., L, 1 | Dphi). Returns o (..., L, Dv) and S_L (..., Dphi, Dv). L is zero-padded up to a
    multiple of the chunk: the padding (k = 0, alpha = 1) comes after every real position, so it
    changes nothing. With per-dimension
    decay, a chunk longer than SUB_CHUNK runs this same function over its sub-chunks (GLA's
    secondary chunking), so the pairwise decays never exceed (SUB_CHUNK x SUB_CHUNK x Dphi).
    """
    length = q.shape[-2]
    size = min(chunk_size, length)
    n_chunks = -(-length // size)
    pad = n_chunks * size - length

    def chunked(t: Tensor) -> Tensor:  # (..., L, X) -> (..., N, C, X)
        return F.pad(t, (0, 0, 0, pad)).unflatten(-2, (n_chunks, size))

    q, k, v = chunked(q), chunked(k), chunked(v)
    causal = torch.ones(size, size, dtype=torch.bool, device=q.device).tril()
    if log_alpha is None:
        scores = (q @ k.mT).masked_fill(~causal, 0.0)  # (..., N, C, C)
        kv = k.mT @ v  # (..., N, Dphi, Dv): what each chunk adds to the state
        after = kv.cumsum(dim=-3)  # the state after each chunk
        entering = after - kv  # the state before each chunk: the earlier chunks' sum
        return (scores @ v + q @ entering).flatten(-3, -2)[..., :length, :], after[..., -1, :, :]
    b = chunked(log_alpha).cumsum(dim=-2)  # (..., N, C, G): log decay from chunk start to t
    b_last = b[..., -1:, :]  # (..., N, 1, G): log decay across the whole chunk
    if b.shape[-1] == 1 or size <= SUB_CHUNK:
        within = decayed_scores(q, k, b, causal) @ v  # (..., N, C, Dv)
    else:
        within = chunked_causal(q, k, v, chunked(log_alpha), SUB_CHUNK)[0]
    kv = (k * (b_last - b).exp()).mT @ v  # keys decayed to the chunk's end: (..., N, Dphi, Dv)
    across = b_last.exp().mT  # (..., N, G, 1): decays the state row by row over one chunk
    states = [torch.zeros_like(kv[..., 0, :, :])]
    # Over chunks, not positions: (..., Dphi, Dv) per step. unbind, not kv[..., n, :, :]: the
    # backward of indexing would write a full-size zero gradient at every step.
    for decay_n, kv_n in zip(across.unbind(-3), kv.unbind(-3), strict=True):
        states.append(decay_n * states[-1] + kv_n)
    entering = torch.stack(states[:-1], dim=-3)  # (..., N, Dphi, Dv)
    out = within + (q * b.exp()) @ entering  # (..., N, C, Dv)
    return out.flatten(-3, -2)[..., :length, :], states[-1]
