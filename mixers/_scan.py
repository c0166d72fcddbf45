"""The selective scan of :mod:`mixers.ssm` (Mamba's recurrence), chunked and without a Python
loop over positions.

The recurrence, per channel e and state n, with a_t = exp(dt_t[e] A[e, n]) in (0, 1]::

    h_t[e, n] = a_t[e, n] h_{t-1}[e, n] + dt_t[e] B_t[n] x_t[e]      y_t[e] = sum_n C_t[n] h_t[e, n]

Mamba-2's SSD chunking ("ssd_minimal") computes a chunk's outputs from a segment-sum matrix of
cumulative log decays, exp(S_t - S_s) for s <= t, which is a (chunk, chunk) matrix per *head*.
Here the decay differs for every (channel, state) pair, so that matrix would be
(B, chunk, chunk, d_inner, d_state): too big, and it does chunk times the work of the recurrence.
Instead each chunk runs a parallel prefix scan (:func:`linear_scan`), the even/odd recursion of
Blelloch's scan written with tensor ops: pair up neighbours, solve the half-length recurrence of
the pairs, then fill in the positions between. It takes log2(chunk) levels, each a few elementwise
ops on halving tensors, and only ever multiplies decays in (0, 1], so it cannot overflow (the
cumulative-sum form exp(S_t) * sum_s exp(-S_s) u_s overflows once a chunk's decay passes e^-88).

Chunks run one after another in a Python loop that carries the state (B, d_inner, d_state). Each
chunk is a gradient checkpoint: training keeps only the chunk's inputs and its final state, and
backward recomputes the chunk's (B, chunk, d_inner, d_state) states, so the live states scale
with chunk_size instead of length (Mamba's fused kernel gets the same by recomputing in SRAM).
The price is one more forward of the scan (about 1.5x the time for half the memory at L = 256).
``chunk_size`` trades that memory against the Python overhead of length / chunk_size steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def linear_scan(a: Tensor, u: Tensor) -> Tensor:
    """All states of h_t = a_t * h_{t-1} + u_t along dim 1, from h_0 = 0, in log2(T) levels.

    a and u are (B, T, ...) of one shape; returns h of that shape. A pair of steps is again one
    step, h_{2i+1} = (a_{2i+1} a_{2i}) h_{2i-1} + (a_{2i+1} u_{2i} + u_{2i+1}), so the odd
    positions solve a half-length recurrence and each even one is one step from its left
    neighbour. An odd length is padded with one identity step (a = 1, u = 0) and trimmed. Time
    stays outside the channel dims, so every op runs over contiguous rows; pads and unbinds
    rather than slices, because a slice's backward zero-fills a tensor of the full size.
    """
    length = a.shape[1]
    if length == 1:
        return u
    inner = (0, 0) * (a.dim() - 2)  # F.pad counts dims from the last one
    odd = length % 2
    if odd:
        a, u = F.pad(a, (*inner, 0, 1), value=1.0), F.pad(u, (*inner, 0, 1))
    a_even, a_odd = a.unflatten(1, (-1, 2)).unbind(2)  # (B, T/2, ...) each
    u_even, u_odd = u.unflatten(1, (-1, 2)).unbind(2)
    h_odd = linear_scan(a_odd * a_even, a_odd * u_even + u_odd)  # states at positions 1, 3, ...
    h_even = u_even + a_even * F.pad(h_odd, (*inner, 1, -1))  # a_{2i} h_{2i-1} + u_{2i}
    h = torch.stack((h_even, h_odd), dim=2).flatten(1, 2)
    return F.pad(h, (*inner, 0, -1)) if odd else h


def scan_chunk(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h: Tensor
) -> tuple[Tensor, Tensor]:
    """One chunk of the selective scan from state h: outputs (B, T, d_inner) and the last state.

    x, dt: (B, T, d_inner); A: (d_inner, d_state); B, C: (B, T, d_state); h: (B, d_inner, d_state).
    """
    a = torch.exp(dt[..., None] * A)  # (B, T, E, N) decay of each step
    u = (dt * x)[..., None] * B[:, :, None, :]  # (B, T, E, N) what each step writes
    first, rest = u.split([1, u.shape[1] - 1], dim=1)
    carried = torch.exp(dt[:, :1, :, None] * A) * h[:, None]  # h after the first step's decay
    states = linear_scan(a, torch.cat((first + carried, rest), dim=1))  # (B, T, E, N)
    y = (states * C[:, :, None, :]).sum(dim=-1)  # (B, T, E)
    return y, states[:, -1]


def selective_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    h: Tensor,
    chunk_size: int,
) -> tuple[Tensor, Tensor]:
    """The selective scan over the whole sequence in chunks of ``chunk_size`` positions.

    Shapes as :func:`scan_chunk`; returns y (B, L, d_inner) and the final state (B, d_inner,
    d_state). The last chunk is shorter when chunk_size does not divide L.
    """
    outputs = []
    for start in range(0, x.shape[1], chunk_size):
        part = slice(start, start + chunk_size)
        args = (x[:, part], dt[:, part], A, B[:, part], C[:, part], h)
        if torch.is_grad_enabled():
            y, h = checkpoint(scan_chunk, *args, use_reentrant=False)
        else:
            y, h = scan_chunk(*args)
        outputs.append(y)
    return torch.cat(outputs, dim=1), h
