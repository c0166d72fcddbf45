"""The ssm mixer against naive position-by-position recurrences written out here: Mamba's block
in both directions, S4D's FFT kernel in both directions; then its initialisations, state size,
accounting and errors (the selective scan itself: kernels/test_selective_scan.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from mixer_helpers import naive_scan, randn, seeded_mixer

from mixerlab.mixers import build_mixer
from mixerlab.mixers.ssm import S4D, Mamba, StateSpaceMixer
from mixerlab.mixers.testing import check_mixer

D = 8
L = 11
ATOL = 1e-5


def make(causal: bool, **hparams: Any) -> StateSpaceMixer:
    mixer = seeded_mixer("ssm", D, causal=causal, **hparams)
    with torch.no_grad():  # move off the init so that every parameter matters
        for param in mixer.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return mixer


# --- Mamba's block -------------------------------------------------------------------------------


def naive_mamba(block: Mamba, x: torch.Tensor) -> torch.Tensor:
    """Mamba's block on one unpadded sequence (1, n, d), the scan as a loop; the encoder adds the
    second parameter set's scan over the reversed sequence."""
    u, z = block.in_proj(x).chunk(2, dim=-1)
    k = block.conv.weight.shape[-1]
    left = k - 1 if block.causal else (k - 1) // 2
    u = F.silu(
        F.conv1d(
            F.pad(u.transpose(1, 2), (left, k - 1 - left)),
            block.conv.weight,
            block.conv.bias,
            groups=u.shape[-1],
        ).transpose(1, 2)
    )
    y = 0
    for direction, ssm in enumerate(block.ssm):
        v = u.flip(1) if direction else u
        dt, B, C = ssm.x_proj(v).split([ssm.dt_proj.in_features, ssm.d_state, ssm.d_state], -1)
        h0 = torch.zeros(1, v.shape[-1], ssm.d_state)
        out, _ = naive_scan(v, F.softplus(ssm.dt_proj(dt)), -torch.exp(ssm.A_log), B, C, h0)
        out = out + v * ssm.D
        y = y + (out.flip(1) if direction else out)
    return block.out_proj(y * F.silu(z))


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "encoder"])
@pytest.mark.parametrize("chunk_size", [1, 4, 64])  # divides L = 11, does not, exceeds it
def test_mamba_equals_the_naive_recurrence_with_padding(causal: bool, chunk_size: int) -> None:
    mixer = make(causal, chunk_size=chunk_size, d_state=4, conv_kernel=3)
    x = randn(2, L, D)
    lengths = [L, 6]
    mask = torch.arange(L)[None] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        y = mixer(x, mask)
        for row, n in enumerate(lengths):
            expected = naive_mamba(mixer.layer, x[row : row + 1, :n])[0]
            torch.testing.assert_close(y[row, :n], expected, atol=ATOL, rtol=0)


# --- S4D -----------------------------------------------------------------------------------------


def naive_s4d(layer: S4D, x: torch.Tensor) -> torch.Tensor:
    """S4D's recurrence (B, L, H); the encoder adds an anticausal one with the second C, which
    reads positions after t only."""
    dtA, dB, C = layer.discretize()
    u = x.transpose(0, 1)  # (L, B, H)
    h = torch.zeros(x.shape[0], *dtA.shape, dtype=dB.dtype)
    forward = []
    for t in range(x.shape[1]):
        h = torch.exp(dtA) * h + dB * u[t][..., None]
        forward.append(layer.readout(C[0], h))
    y = torch.stack(forward, 1)
    if not layer.causal:
        h = torch.zeros_like(h)
        backward = [layer.readout(C[1], h)]  # the last position has nothing after it
        for t in range(x.shape[1] - 1, 0, -1):  # h now sums u[t], u[t + 1], ...: output t - 1
            h = torch.exp(dtA) * h + dB * u[t][..., None]
            backward.insert(0, layer.readout(C[1], h))
        y = y + torch.stack(backward, 1)
    return layer.post(y + x * layer.D)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "encoder"])
@pytest.mark.parametrize("init", ["lin", "inv", "real"])
def test_s4d_fft_kernel_equals_the_recurrence(causal: bool, init: str) -> None:
    mixer = make(causal, selective=False, init=init, d_state=6)
    x = randn(2, L, D)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), naive_s4d(mixer.layer, x), atol=ATOL, rtol=0)


# --- initialisation, state, accounting, errors ---------------------------------------------------


def test_initial_A_is_the_documented_one() -> None:
    torch.manual_seed(0)
    n = torch.arange(4.0)
    for init, imag in {"lin": math.pi * n, "inv": 8 / math.pi * (8 / (2 * n + 1) - 1)}.items():
        layer = build_mixer("ssm", D, selective=False, init=init, d_state=8).layer
        torch.testing.assert_close(-torch.exp(layer.A_log), torch.full((D, 4), -0.5))
        torch.testing.assert_close(layer.A_imag, imag.expand(D, 4))
    real = -torch.arange(1.0, 9.0)
    s4d_real = build_mixer("ssm", D, selective=False, init="real", d_state=8).layer
    assert s4d_real.A_imag is None
    torch.testing.assert_close(-torch.exp(s4d_real.A_log), real.expand(D, 8))
    mamba = build_mixer("ssm", D, d_state=8, expand=2, dt_min=0.01, dt_max=0.02).layer
    torch.testing.assert_close(-torch.exp(mamba.ssm[0].A_log), real.expand(2 * D, 8))
    dt = F.softplus(mamba.ssm[0].dt_proj.bias)
    assert bool(((dt >= 0.01 - 1e-6) & (dt <= 0.02 + 1e-6)).all())
    assert mamba.ssm[0].dt_proj.in_features == math.ceil(D / 16)


@pytest.mark.parametrize(
    ("hparams", "expected"),
    [
        ({}, 2 * D * (3 + 16)),
        ({"conv_kernel": 1, "expand": 1}, D * 16),
        ({"selective": False, "init": "lin"}, D * 16),
        ({"selective": False}, D * 16),
    ],
)
def test_state_size_is_the_same_at_every_length(hparams: dict, expected: int) -> None:
    mixer = make(True, **hparams)
    assert [mixer.state_size(n) for n in (1, 10, 10_000)] == [expected] * 3


def test_flops_count_the_selective_block_by_hand() -> None:
    mixer = make(True, d_state=4, expand=2, conv_kernel=3, dt_rank=2)
    e = 2 * D
    by_hand = 2 * D * 2 * e + 2 * 3 * e + 2 * e * (2 + 8) + 2 * 2 * e + 7 * e * 4 + 3 * e
    by_hand += 2 * e * D
    assert mixer.flops_per_token(10) == mixer.flops_per_token(1000) == by_hand
    encoder = make(False, d_state=4, expand=2, conv_kernel=3, dt_rank=2)
    assert encoder.flops_per_token(10) == by_hand + 2 * e * (2 + 8) + 2 * 2 * e + 7 * e * 4 + 3 * e


def test_no_weight_decay_names_the_ssm_parameters() -> None:
    def exempt(mixer: StateSpaceMixer) -> set[str]:
        chosen = {id(p) for p in mixer.no_weight_decay_parameters()}
        return {name for name, p in mixer.named_parameters() if id(p) in chosen}

    assert exempt(make(False)) == {
        f"layer.ssm.{i}.{name}" for i in (0, 1) for name in ("A_log", "D", "dt_proj.bias")
    }
    assert exempt(make(True, selective=False, init="inv")) == {
        "layer.A_log",
        "layer.A_imag",
        "layer.log_dt",
        "layer.D",
    }


@pytest.mark.parametrize(
    ("hparams", "match"),
    [
        ({"init": "lin"}, "selective=false"),
        ({"selective": False, "init": "lin", "d_state": 5}, "even"),
        ({"init": "hippo"}, "choose one of"),
        ({"dt_rank": 0}, "dt_rank"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"dt_min": 0.2}, "dt_min <= dt_max"),
    ],
)
def test_bad_hparams_get_a_clear_error(hparams: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_mixer("ssm", D, **hparams)


@pytest.mark.parametrize(
    "hparams",
    [
        {"selective": False, "init": "inv", "d_state": 8, "expand": 1},
        {"chunk_size": 5, "conv_kernel": 2, "dt_rank": 3, "d_state": 4, "expand": 1},
    ],
)
def test_variant_meets_the_contract(hparams: dict) -> None:
    """Non-default hyper-parameters, in both modes (the contract suite builds defaults only)."""
    check_mixer("ssm", d_model=D, max_len=12, hparams=hparams)
