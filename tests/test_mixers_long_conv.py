"""Long convolutions: the FFT convolution against F.conv1d, conv's global kernels (and BaseConv,
one config of conv), and the Hyena operator against its equations."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mixerlab.mixers import build_mixer
from mixerlab.mixers.conv import ConvMixer, fft_conv
from mixerlab.mixers.hyena import HyenaMixer
from mixerlab.mixers.testing import check_mixer

D, MAX_LEN = 8, 12
BASECONV = {"kernel_size": -1, "gate": "linear"}  # conf/mixer/conv.yaml's BaseConv settings


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def conv1d_reference(u: torch.Tensor, kernel: torch.Tensor, causal: bool) -> torch.Tensor:
    """y[t] = sum_s kernel[:, s] u[:, :, t - s] on u (B, C, L) by zero-padded F.conv1d (which
    correlates: flip the kernel)."""
    length = u.shape[-1]
    padding = (length - 1, 0) if causal else (length - 1, length - 1)
    weight = kernel.flip(-1)[:, None, :]  # (C, 1, K), oldest offset first
    return F.conv1d(F.pad(u, padding), weight, groups=u.shape[1])


# --- fft_conv -----------------------------------------------------------------------------------


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


# --- conv with a global kernel ------------------------------------------------------------------


@pytest.mark.parametrize(
    "hparams", [{"kernel_size": -1}, BASECONV, {"kernel_size": -1, "gate": "none"}]
)
def test_global_conv_meets_the_contract(hparams: dict[str, Any]) -> None:
    check_mixer("conv", d_model=D, max_len=MAX_LEN, hparams=hparams)


@pytest.mark.parametrize("causal", [True, False])
def test_global_conv_is_conv1d_with_its_max_len_kernel(causal: bool) -> None:
    """Shorter inputs read the taps nearest offset 0, like zero-padded F.conv1d does."""
    torch.manual_seed(0)
    mixer = ConvMixer(D, causal=causal, max_len=MAX_LEN, kernel_size=-1, gate="none")
    assert mixer.global_mixing and not ConvMixer(D).global_mixing
    taps = MAX_LEN if causal else 2 * MAX_LEN - 1
    assert mixer.conv.weight.shape == (D, 1, taps)
    padding = (MAX_LEN - 1, 0) if causal else (MAX_LEN - 1, MAX_LEN - 1)
    for length in (1, 5, MAX_LEN):
        u = randn(2, D, length)
        expected = F.conv1d(F.pad(u, padding), mixer.conv.weight, mixer.conv.bias, groups=D)
        torch.testing.assert_close(mixer._global_conv(u), expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(("causal", "expected"), [(True, list(range(9))), (False, list(range(16)))])
def test_global_conv_sees_the_whole_past_or_sequence(causal: bool, expected: list[int]) -> None:
    mixer = build_mixer("conv", D, causal=causal, max_len=16, kernel_size=-1, gate="none")
    x = randn(1, 16, D).requires_grad_()
    mixer(x)[0, 8].sum().backward()
    reach = x.grad[0].abs().sum(dim=-1)  # the FFT leaves round-off (~1e-7) where F.conv1d has 0
    assert [s for s in range(16) if reach[s] > 1e-4 * reach.max()] == expected


def test_global_conv_follows_zoology_init_and_accounting() -> None:
    torch.manual_seed(0)
    mixer = ConvMixer(64, max_len=256, kernel_size=-1, gate="linear")
    assert (
        abs(float(mixer.conv.weight.detach().std()) - 1.0) < 0.02
    )  # N(0, 1) taps, not Conv1d's 1/sqrt(K)
    assert mixer.state_size(10) == 64 * 10 and mixer.state_size(20) == 64 * 20
    fft = 64 * (10 * math.log2(2 * 256) + 6)
    assert mixer.flops_per_token(256) == pytest.approx(2 * 64 * 128 + fft + 2 * 64 * 64)
    assert ConvMixer(64, max_len=256).flops_per_token(256) == 2 * 64 * 128 + 2 * 4 * 64 + 2 * 64**2


def test_global_conv_bad_settings_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"kernel_size=-1.*needs a positive max_len, got None"):
        ConvMixer(D, kernel_size=-1)
    with pytest.raises(ValueError, match=r"takes dilation=1, got 2"):
        ConvMixer(D, max_len=MAX_LEN, kernel_size=-1, dilation=2)
    with pytest.raises(ValueError, match=r"kernel_size must be -1 .global. or at least 1"):
        ConvMixer(D, kernel_size=-2)
    with pytest.raises(ValueError, match="choose one of: silu, linear, none"):
        ConvMixer(D, gate="sigmoid")


def test_linear_gate_multiplies_without_silu() -> None:
    """BaseConv's gate: conv(u) * g, so doubling the input doubles g and the conv (bias aside)."""
    torch.manual_seed(0)
    mixer = ConvMixer(D, max_len=MAX_LEN, **BASECONV).eval()
    for linear in (mixer.in_proj, mixer.out_proj, mixer.conv):
        torch.nn.init.zeros_(linear.bias)
    x = randn(1, 6, D)
    torch.testing.assert_close(mixer(2 * x), 4 * mixer(x), atol=1e-4, rtol=1e-4)


# --- hyena --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hparams",
    [{"order": 3}, {"order": 1, "modulate": False, "filter_emb_dim": 3, "filter_order": 8}],
)
def test_hyena_variants_meet_the_contract(hparams: dict[str, Any]) -> None:
    check_mixer("hyena", d_model=D, max_len=MAX_LEN, hparams=hparams)


def hyena_by_the_equations(mixer: HyenaMixer, x: torch.Tensor) -> torch.Tensor:
    """z_1 = v, z_{n+1} = x_n (h_n * z_n + D_n z_n), y = out_proj(z_{N+1}), with F.conv1d."""
    length = x.shape[1]
    streams = mixer.in_proj(x).transpose(1, 2)  # (B, (N + 1) d, L)
    padding = (2, 0) if mixer.causal else (1, 1)
    streams = mixer.short_conv(F.pad(streams, padding))
    *gates, z = streams.split(D, dim=1)
    offsets = torch.arange(length) if mixer.causal else torch.arange(1 - length, length)
    filters = mixer.implicit_filter(offsets)  # (N d, taps)
    for n, gate in enumerate(gates):
        h = filters[n * D : (n + 1) * D]
        z = gate * (conv1d_reference(z, h, mixer.causal) + z * mixer.D[n, :, None])
    return mixer.out_proj(z.transpose(1, 2))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("order", [2, 3])
def test_hyena_follows_the_order_n_recurrence(causal: bool, order: int) -> None:
    torch.manual_seed(0)
    mixer = HyenaMixer(D, causal=causal, max_len=MAX_LEN, order=order).eval()
    x = randn(2, 9, D)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), hyena_by_the_equations(mixer, x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("causal", [True, False])
def test_hyena_filter_decays_along_the_sequence_when_modulated(causal: bool) -> None:
    """Same seed, same MLP: with the window, the filter keeps its value at offset 0 and fades
    with |offset| in both directions (every channel is down to 1% by 150% of max_len); without
    it, it does not fade."""
    length = 64
    offsets = torch.arange(length) if causal else torch.arange(1 - length, length)
    filters = {}
    for modulate in (True, False):
        torch.manual_seed(0)
        mixer = HyenaMixer(D, causal=causal, max_len=length, modulate=modulate)
        with torch.no_grad():
            filters[modulate] = mixer.implicit_filter(offsets).abs()  # (2 d, taps)
    torch.testing.assert_close(filters[True][:, offsets == 0], filters[False][:, offsets == 0])
    near = offsets.abs() < length // 8
    directions = [offsets >= 3 * length // 4] + ([] if causal else [offsets <= -3 * length // 4])
    for far in directions:
        assert filters[True][:, far].mean() < 0.1 * filters[True][:, near].mean()
        assert filters[False][:, far].mean() > 0.3 * filters[False][:, near].mean()


def test_hyena_accounting_and_weight_decay() -> None:
    mixer = HyenaMixer(D, max_len=MAX_LEN, order=3)
    assert mixer.state_size(10) - mixer.state_size(5) == 3 * D * 5  # the histories grow
    assert mixer.state_size(0) == 4 * D * 2  # the short convolution's window
    assert mixer.flops_per_token(MAX_LEN) > mixer.flops_per_token(2)
    names = {
        n for n, p in mixer.named_parameters() for q in mixer.no_weight_decay_parameters() if p is q
    }
    assert names == {
        "D",
        *(f"implicit_filter.{n}" for n, _ in mixer.implicit_filter.named_parameters()),
    }


def test_hyena_bad_settings_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="needs a positive max_len"):
        HyenaMixer(D)
    with pytest.raises(ValueError, match=r"filter_emb_dim must be odd and at least 3.*got 4"):
        HyenaMixer(D, max_len=MAX_LEN, filter_emb_dim=4)
    with pytest.raises(ValueError, match="order must be at least 1"):
        HyenaMixer(D, max_len=MAX_LEN, order=0)
