"""The selective scan (Mamba's recurrence, behind ssm) against the loop written out one position
at a time: values, final state and the hand-written backward for any chunk size, extreme decays
over long sequences, chunks cut to cache size on CPU, float32 under autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from mixer_helpers import naive_scan, randn

from mixerlab.mixers.kernels.selective_scan import CACHE_FLOATS, chunk_length, selective_scan

L = 11


def scan_inputs(
    length: int, d_inner: int, d_state: int, dt: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """x, dt, A, B, C, h0 of the scan (float64 leaves that require grad) and a weight for y."""
    x, B, C = (
        randn(2, length, n, seed=seed) for n, seed in ((d_inner, 2), (d_state, 3), (d_state, 4))
    )
    dt = F.softplus(randn(2, length, d_inner, seed=5)) if dt is None else dt
    A = -torch.exp(randn(d_inner, d_state, seed=6))
    h0 = randn(2, d_inner, d_state, seed=7)
    inputs = [t.double().requires_grad_() for t in (x, dt, A, B, C, h0)]
    return (*inputs, randn(2, length, d_inner, seed=8).double())


def scan_results(scan, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """y, the last state and the gradients of a loss on both with respect to every input."""
    *leaves, weight = inputs
    y, h = scan(*leaves)
    return [y, h, *torch.autograd.grad((y * weight).sum() + (h * h).sum(), leaves)]


@pytest.mark.parametrize("chunk_size", [1, 3, 4, L, 64])
def test_chunked_selective_scan_equals_the_loop_with_its_gradients(chunk_size: int) -> None:
    """Values, final state and gradients (the hand-written backward, initial state included),
    for chunk sizes that divide L = 12, do not, and exceed it."""
    inputs = scan_inputs(12, 3, 4)
    expected = scan_results(naive_scan, inputs)
    got = scan_results(lambda *a: selective_scan(*a, chunk_size), inputs)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


def test_long_scan_with_extreme_decays_stays_finite_and_exact() -> None:
    """2,000 positions in float32 where dt jumps between 1e-6 (a ~ 1: the state is carried
    untouched), 50 (a = exp(-50 |A|), down to 0 in float32: the state is wiped) and 0 (a pad):
    no overflow, no NaN, and the float64 loop's values and gradients to float32 rounding."""
    length = 2000
    pattern = torch.tensor([1e-6] * 7 + [50.0, 0.0, 0.3])
    dt = pattern.repeat(length // 10)[torch.randperm(length, generator=torch.Generator())]
    inputs = scan_inputs(length, 3, 4, dt=dt[None, :, None].expand(2, length, 3).contiguous())
    expected = scan_results(naive_scan, inputs)
    as_float = [t.detach().float().requires_grad_() for t in inputs[:-1]]
    got = scan_results(lambda *a: selective_scan(*a, 64), (*as_float, inputs[-1].float()))
    for g, e in zip(got, expected, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, e.float(), atol=1e-4, rtol=1e-4)


def test_chunks_are_cut_to_cache_size_on_cpu_only() -> None:
    rows = 16 * 256 * 16  # batch x d_inner x d_state floats per position
    x = torch.empty(16, 1, 256)
    assert chunk_length(x, 16, 64) == CACHE_FLOATS // rows < 64
    assert chunk_length(x[:1], 16, 64) == 64  # one sequence: the chunk_size bound holds
    assert chunk_length(torch.empty(4096, 1, 256), 16, 64) == 1
    assert chunk_length(torch.empty(16, 1, 256, device="meta"), 16, 64) == 64


def test_scan_stays_float32_under_autocast() -> None:
    """bf16 autocast leaves the recurrence in float32: same values as without it."""
    *leaves, _ = (t.detach().float() for t in scan_inputs(12, 3, 4))
    expected = selective_scan(*leaves, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = selective_scan(*leaves, 4)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, e)
