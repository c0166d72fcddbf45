"""Depthwise linear convolution by FFT: the long kernels of the global convolution
(:mod:`mixerlab.mixers.conv`), of Zoology's BaseConv and of Hyena's implicit filters.

A kernel as long as the sequence costs O(L^2) as a direct convolution; by FFT it is O(L log L):

    y[t] = sum_s k[s] u[t - s]  =  irfft(rfft(u, 2L) * rfft(k, 2L))[t],   t < L

Zero-padding both to 2L turns the FFT's circular convolution into a linear one: an offset never
wraps onto a real position. :func:`fft_conv` is the one FFT convolution of the package.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def fft_conv(u: Tensor, kernel: Tensor, *, causal: bool) -> Tensor:
    """Depthwise linear convolution by FFT, in fp32 whatever the autocast dtype (fp64 inputs
    stay fp64).

    ``u`` (B, C, L), time last like ``F.conv1d`` (the FFTs run along a contiguous axis);
    ``kernel`` (C, K) in offset order, ``y[t] = sum_s kernel[:, s] u[t - s]``: causal K = L,
    offsets 0..L-1; two-sided (``causal=False``) K = 2L - 1, offsets -(L-1)..L-1 with offset 0
    at index L - 1. Returns (B, C, L) in ``u``'s dtype.
    """
    length = u.shape[-1]
    taps = length if causal else 2 * length - 1
    if kernel.shape[-1] != taps:
        raise ValueError(
            f"a {'causal' if causal else 'two-sided'} kernel for length {length} needs {taps} "
            f"taps, got {kernel.shape[-1]}"
        )
    n = 2 * length
    dtype = torch.promote_types(torch.promote_types(u.dtype, kernel.dtype), torch.float32)
    with torch.autocast(device_type=u.device.type, enabled=False):
        k = kernel.to(dtype)
        if not causal:
            # Negative offsets go to the end of the FFT buffer: circularly, -s is n - s.
            zero = k.new_zeros(k.shape[0], 1)
            k = torch.cat((k[:, length - 1 :], zero, k[:, : length - 1]), dim=1)  # (C, 2L)
        k_f = torch.fft.rfft(k, n=n)  # (C, L + 1)
        u_f = torch.fft.rfft(u.to(dtype), n=n)  # (B, C, L + 1)
        y = torch.fft.irfft(u_f * k_f, n=n)[..., :length]  # (B, C, L)
    return y.to(u.dtype)


def fft_conv_flops(channels: int, seq_len: int) -> float:
    """Forward FLOPs per token of :func:`fft_conv`: per channel, a real FFT of size n = 2L and
    its inverse (about 2.5 n log2 n each, half the usual 5 n log2 n of a complex FFT) and the
    spectral product (n/2 complex multiplies of 6 FLOPs), over L tokens:
    ``channels * (10 log2(2L) + 6)``. The kernel's FFT depends on the parameters only and is
    shared by the batch, so it is not counted per token."""
    return channels * (10 * math.log2(2 * seq_len) + 6)
