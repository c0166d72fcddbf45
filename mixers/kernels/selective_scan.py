"""The selective scan of :mod:`mixerlab.mixers.ssm` (Mamba's recurrence), with a hand-written
backward.

The recurrence, per channel e and state n, with a_t = exp(dt_t[e] A[e, n]) in (0, 1]::

    h_t[e, n] = a_t[e, n] h_{t-1}[e, n] + dt_t[e] B_t[n] x_t[e]      y_t[e] = sum_n C_t[n] h_t[e, n]

Every step is one in-place multiply-add over a (batch, d_inner, d_state) slice, exactly the
reference loop, so nothing can overflow: it only ever multiplies decays in (0, 1]. Mamba-2's SSD
chunking and the cumulative-sum form exp(S_t) sum_s exp(-S_s) u_s trade that for matmuls, but with
a decay per (channel, state) the first needs a (chunk, chunk, d_inner, d_state) tensor and the
second overflows once a chunk's decay passes e^-88. A Blelloch parallel scan avoids the loop,
but its log2(chunk) levels of products, pads and stacks, each saved by autograd, move far more
memory: on 2 CPU cores its forward + backward took 5x as long as this.

The positions are cut into chunks. Forward keeps only each chunk's starting state; backward
recomputes the chunk's decays and states and runs the adjoint recurrence backwards,
g_t = dL/dh_t = C_t dL/dy_t + a_{t+1} g_{t+1}, from which every gradient is a product of chunk
tensors (dL/d(dt A) = g_t a_t h_{t-1}, dL/du_t = g_t). Live memory scales with the chunk, not
the length, as with Mamba's fused kernel, which recomputes in SRAM. On CPU a chunk is also cut
to about :data:`CACHE_FLOATS` floats per (batch, chunk, d_inner, d_state) tensor, so the dozen
passes over it stay in cache: at batch 16 that measured 1.5x faster than 64 positions.

The scan runs in float32 with autocast off (a bf16 state would forget its low bits every step),
and outside ``torch.compile``, which would unroll the loop once per position.
"""

from __future__ import annotations

import torch
from torch import Tensor

CACHE_FLOATS = 2**19  # 2 MiB per chunk tensor: fastest measured on a 2-core EPYC (1 MiB L2)


def chunk_length(x: Tensor, d_state: int, chunk_size: int) -> int:
    """Positions per chunk: ``chunk_size``, cut on CPU to keep a chunk's tensors cache-sized."""
    if x.device.type != "cpu":
        return chunk_size
    return max(1, min(chunk_size, CACHE_FLOATS // (x.shape[0] * x.shape[2] * d_state)))


def chunk_states(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """Decays a and states h of one chunk from state h, both (B, T, E, N), position by position.

    x, dt: (B, T, E); A: (E, N); B: (B, T, N); h: (B, E, N). The states are written in place over
    what each step adds, dt x B, so the chunk holds two (B, T, E, N) tensors.
    """
    a = torch.mul(dt[..., None], A).exp_()
    states = (dt * x)[..., None] * B[:, :, None, :]
    for a_t, state in zip(a.unbind(1), states.unbind(1), strict=True):
        h = state.addcmul_(a_t, h)
    return a, states


def chunk_gradients(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h: Tensor, grad_y: Tensor, carry: Tensor
) -> tuple[Tensor, ...]:
    """One chunk's backward: dL/dx, dL/ddt, dL/dA, dL/dB, dL/dC and dL/dh before the chunk, from
    dL/dy (B, T, E) and ``carry``, dL/dh at its end; shapes as :func:`chunk_states`.

    Recomputes the chunk, runs g_t = C_t dL/dy_t + a_{t+1} g_{t+1} backwards in place, then
    dL/du_t = g_t for the write u_t = dt_t x_t B_t and dL/d(dt_t A) = g_t a_t h_{t-1} for the decay.
    """
    a, states = chunk_states(x, dt, A, B, h)
    grad_C = (grad_y[:, :, None] @ states).squeeze(2)
    g = grad_y[..., None] * C[:, :, None, :]  # y_t's share of dL/dh_t
    g_t = g[:, -1].add_(carry)
    for a_next, g_prev in zip(a.unbind(1)[:0:-1], g.unbind(1)[-2::-1], strict=True):
        g_t = g_prev.addcmul_(a_next, g_t)
    grad_u = (g * B[:, :, None, :]).sum(-1)  # dL/d(dt x): (B, T, E)
    grad_B = ((dt * x)[:, :, None] @ g).squeeze(2)
    grad_decay = a.mul_(g)  # a_t g_t, then times h_{t-1}
    carry = grad_decay[:, 0].clone()  # a_0 g_0 = dL/dh before the chunk
    grad_decay[:, 1:].mul_(states[:, :-1])
    grad_decay[:, 0].mul_(h)
    grad_A = (grad_decay * dt[..., None]).sum((0, 1))
    grad_dt = grad_u * x + grad_decay.mul_(A).sum(-1)
    return grad_u * dt, grad_dt, grad_A, grad_B, grad_C, carry


class SelectiveScan(torch.autograd.Function):
    """The scan as one autograd node: forward saves the chunks' starting states only."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        dt: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        h: Tensor,
        chunk: int,
    ) -> tuple[Tensor, Tensor]:
        y = torch.empty_like(x)
        starts = []
        for start in range(0, x.shape[1], chunk):
            part = slice(start, start + chunk)
            starts.append(h)
            _, states = chunk_states(x[:, part], dt[:, part], A, B[:, part], h)
            y[:, part] = (states * C[:, part, None, :]).sum(-1)
            h = states[:, -1].clone()  # a view would keep the whole chunk alive
        ctx.save_for_backward(x, dt, A, B, C, *starts)
        ctx.chunk = chunk
        return y, h

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_y: Tensor, grad_h: Tensor
    ) -> tuple[Tensor | None, ...]:
        x, dt, A, B, C, *starts = ctx.saved_tensors
        grad_x, grad_dt, grad_B, grad_C = map(torch.empty_like, (x, dt, B, C))
        grad_A = torch.zeros_like(A)
        carry = grad_h  # dL/dh at the end of the chunk, from everything after it
        with torch.autocast(x.device.type, enabled=False):
            for index in reversed(range(len(starts))):
                part = slice(index * ctx.chunk, (index + 1) * ctx.chunk)
                inputs = (x[:, part], dt[:, part], A, B[:, part], C[:, part], starts[index])
                grads = chunk_gradients(*inputs, grad_y[:, part], carry)
                grad_x[:, part], grad_dt[:, part], grad_A_part, grad_B[:, part] = grads[:4]
                grad_C[:, part], carry = grads[4:]
                grad_A += grad_A_part
        return grad_x, grad_dt, grad_A, grad_B, grad_C, carry, None


@torch.compiler.disable
def selective_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    h: Tensor,
    chunk_size: int,
) -> tuple[Tensor, Tensor]:
    """The selective scan over the whole sequence from state h: y (B, L, d_inner), last state.

    x, dt: (B, L, d_inner); A: (d_inner, d_state); B, C: (B, L, d_state); h: (B, d_inner,
    d_state); all float32. Chunks hold at most ``chunk_size`` positions (see
    :func:`chunk_length`); the last one is shorter when the chunk length does not divide L.
    """
    chunk = chunk_length(x, A.shape[1], chunk_size)
    with torch.autocast(x.device.type, enabled=False):
        return SelectiveScan.apply(x, dt, A, B, C, h, chunk)
