"""fft_conv, the long convolution by FFT: equal to F.conv1d in both directions, fp32 under
autocast, and a clear error for a kernel of the wrong length."""

from __future__ import annotations

import pytest
import torch
from mixer_helpers import conv1d_reference, randn

from mixerlab.mixers.kernels.fft_conv import fft_conv


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("length", [1, 2, 7, 16])
def test_fft_conv_equals_conv1d(causal: bool, length: int) -> None:
    u = randn(3, 5, length)
    kernel = randn(5, length if causal else 2 * length - 1, seed=2)
    expected = conv1d_reference(u, kernel, causal)
    torch.testing.assert_close(fft_conv(u, kernel, causal=causal), expected, atol=1e-5, rtol=1e-5)


def test_fft_conv_runs_in_fp32_under_autocast() -> None:
    u, kernel = randn(2, 4, 16), randn(4, 16, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fft_conv(u.bfloat16(), kernel, causal=True)
    assert y.dtype == torch.bfloat16
    expected = conv1d_reference(u.bfloat16().float(), kernel, causal=True)
    torch.testing.assert_close(y.float(), expected, atol=0.05, rtol=0.01)


def test_fft_conv_rejects_a_kernel_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="two-sided kernel for length 4 needs 7 taps, got 4"):
        fft_conv(randn(1, 2, 4), randn(2, 4), causal=False)
