"""conv: the contract for short and global kernels, then receptive fields, gates, the global
kernel against F.conv1d, its init, accounting and errors. (Zoology's BaseConv is not a config of
conv: it is the mixer base_conv, tests/mixers/test_base_conv.py.)"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from mixer_helpers import randn, seeded_mixer

from mixerlab.mixers import TokenMixer, build_mixer
from mixerlab.mixers.conv import ConvMixer
from mixerlab.mixers.testing import check_mixer

D = 16
L = 10
MAX_LEN = 12
GLOBAL_LINEAR_GATE = {"kernel_size": -1, "gate": "linear"}


@pytest.mark.parametrize(
    "hparams",
    [{}, {"kernel_size": 3, "dilation": 2}, {"kernel_size": 4, "gate": "none"}],
    ids=["default", "dilated", "no-gate"],
)
def test_variant_meets_the_contract(hparams: dict[str, Any]) -> None:
    """Every hyper-parameter variant, in both modes: the contract suite builds defaults only."""
    check_mixer("conv", d_model=D, hparams=hparams)


@pytest.mark.parametrize(
    "hparams", [{"kernel_size": -1}, GLOBAL_LINEAR_GATE, {"kernel_size": -1, "gate": "none"}]
)
def test_global_conv_meets_the_contract(hparams: dict[str, Any]) -> None:
    check_mixer("conv", d_model=D, max_len=MAX_LEN, hparams=hparams)


# --- short kernels -------------------------------------------------------------------------------


def receptive_field(mixer: TokenMixer, t: int) -> list[int]:
    """Positions whose input changes the output at t (by the gradient of out[t])."""
    x = randn(1, 16, D).requires_grad_()
    mixer(x)[0, t].sum().backward()
    return [s for s in range(16) if x.grad[0, s].abs().sum() > 0]


@pytest.mark.parametrize(
    ("causal", "kernel_size", "dilation", "expected"),
    [
        (True, 4, 1, [5, 6, 7, 8]),
        (True, 3, 2, [4, 6, 8]),
        (False, 3, 2, [6, 8, 10]),
        # Even kernel, centred: the extra position goes to the right (like padding="same").
        (False, 4, 1, [7, 8, 9, 10]),
        (False, 2, 3, [7, 10]),
    ],
)
def test_conv_receptive_field(causal: bool, kernel_size: int, dilation: int, expected) -> None:
    # Without the gate, whose SiLU branch always reads position t itself.
    hparams = {"kernel_size": kernel_size, "dilation": dilation, "gate": "none"}
    assert receptive_field(seeded_mixer("conv", D, causal=causal, **hparams), t=8) == expected


def test_conv_gate_changes_the_projection() -> None:
    gated, plain = ConvMixer(D, gate="silu"), ConvMixer(D, gate="none")
    assert gated.in_proj.out_features == 2 * D and plain.in_proj.out_features == D
    assert gated.flops_per_token(L) - plain.flops_per_token(L) == 2 * D * D
    assert plain.flops_per_token(L) == 2 * D * D + 2 * 4 * D + 2 * D * D


def test_conv_rejects_bad_kernel() -> None:
    with pytest.raises(ValueError, match="kernel_size"):
        ConvMixer(D, kernel_size=0)


def test_conv_without_gate_is_linear_in_its_input() -> None:
    mixer = seeded_mixer("conv", D, causal=True, gate="none")
    a, b = randn(1, L, D), randn(1, L, D, seed=2)
    zero = mixer(torch.zeros_like(a))
    torch.testing.assert_close(mixer(a + b) - zero, (mixer(a) - zero) + (mixer(b) - zero))


# --- global kernels ------------------------------------------------------------------------------


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
    """gate="linear": conv(u) * g, so doubling the input doubles g and the conv (bias aside)."""
    torch.manual_seed(0)
    mixer = ConvMixer(D, max_len=MAX_LEN, **GLOBAL_LINEAR_GATE).eval()
    for linear in (mixer.in_proj, mixer.out_proj, mixer.conv):
        torch.nn.init.zeros_(linear.bias)
    x = randn(1, 6, D)
    torch.testing.assert_close(mixer(2 * x), 4 * mixer(x), atol=1e-4, rtol=1e-4)
