"""The ssm mixer against naive position-by-position recurrences written out here: Mamba's block
in both directions, S4D's FFT kernel in both directions; the two presets (conf/mixer/mamba.yaml,
s4d.yaml) against their reference settings, the s4d preset against S4D's kernel formula in
float64; then its initialisations, state size, accounting and errors (the selective scan itself:
kernels/test_selective_scan.py)."""

from __future__ import annotations

import math
from importlib.resources import files
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
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


# --- the presets ---------------------------------------------------------------------------------


def preset(option: str) -> tuple[str, str, dict[str, Any]]:
    """A conf/mixer option's registered name, label and hyper-parameters, read from its YAML."""
    node = yaml.safe_load((files("mixerlab.conf") / "mixer" / f"{option}.yaml").read_text())
    hparams = {key: value for key, value in node.items() if key not in ("name", "label")}
    return node["name"], node["label"], hparams


def test_mamba_preset_has_mamba_ssm_defaults() -> None:
    """mamba_ssm/modules/mamba_simple.py's Mamba(d_model, d_state=16, d_conv=4, expand=2,
    dt_rank="auto", dt_min=0.001, dt_max=0.1), with A from S4D-Real; chunk_size is ours."""
    name, label, hparams = preset("mamba")
    assert (name, label) == ("ssm", "mamba")
    mamba_simple = {"d_state": 16, "conv_kernel": 4, "expand": 2, "dt_rank": "auto"}
    assert hparams == {
        **mamba_simple, "selective": True, "init": "real", "dt_min": 0.001, "dt_max": 0.1,
        "chunk_size": 64,
    }  # fmt: skip
    block = build_mixer(name, 40, **hparams).layer
    assert isinstance(block, Mamba) and block.out_proj.in_features == 80
    assert block.ssm[0].dt_proj.in_features == 3  # ceil(40 / 16)
    assert block.conv.weight.shape[-1] == 4 and block.ssm[0].A_log.shape == (80, 16)


def test_s4d_preset_is_s4d_lin_with_s4d_py_defaults() -> None:
    """s4d.py: S4D(d_model, d_state=64) -> S4DKernel(N=64, dt_min=0.001, dt_max=0.1), N // 2
    complex modes; so its state is 64 floats per channel, ours too. dt is log-uniform."""
    name, label, hparams = preset("s4d")
    assert (name, label) == ("ssm", "s4d")
    assert hparams == {
        "selective": False, "d_state": 64, "init": "lin", "dt_min": 0.001, "dt_max": 0.1,
        "a_dt_max_lr": 0.001,
    }  # fmt: skip
    torch.manual_seed(0)
    mixer = build_mixer(name, 512, **hparams)
    layer = mixer.layer
    assert isinstance(layer, S4D) and layer.A_log.shape == (512, 32)
    assert mixer.state_size(100) == 512 * 64
    # dt log-uniform in [dt_min, dt_max]: Kolmogorov-Smirnov distance to U(0, 1) of its position
    position = (layer.log_dt - math.log(1e-3)) / (math.log(0.1) - math.log(1e-3))
    assert bool(((position >= 0) & (position <= 1)).all())
    ranked, ecdf = position.detach().sort().values, torch.arange(1, 513) / 512
    distance = torch.maximum(ecdf - ranked, ranked - (ecdf - 1 / 512)).max()
    assert distance < 1.36 / math.sqrt(512)  # the 5% critical value
    exempt = {id(p) for p in mixer.no_weight_decay_parameters()}
    assert {name for name, p in mixer.named_parameters() if id(p) in exempt} == {
        "layer.A_log", "layer.A_imag", "layer.log_dt", "layer.D"
    }  # fmt: skip
    # s4d.py registers A and dt at min(1e-3, lr): capped, not D
    capped = {id(p): cap for p, cap in mixer.max_lr_parameters()}
    assert {name: capped[id(p)] for name, p in mixer.named_parameters() if id(p) in capped} == {
        "layer.A_log": 1e-3, "layer.A_imag": 1e-3, "layer.log_dt": 1e-3
    }  # fmt: skip


def test_s4d_preset_kernel_and_output_are_s4ds_in_float64() -> None:
    """S4D-Lin, A_n = -1/2 + i pi n (n < N/2), and the ZOH kernel
    K_l = 2 Re(sum_n C_n (exp(dt A_n) - 1) / A_n exp(dt A_n l)), written from the paper; the
    output is the causal Toeplitz product with K, plus D u, then GELU, Linear and GLU."""
    name, _, hparams = preset("s4d")
    H, length = 6, 20
    torch.manual_seed(0)
    mixer = build_mixer(name, H, **hparams).double().eval()
    layer = mixer.layer
    n = torch.arange(hparams["d_state"] // 2, dtype=torch.float64)
    lin = torch.complex(torch.full_like(n, -0.5), math.pi * n)  # S4D-Lin
    A = torch.complex(-torch.exp(layer.A_log), layer.A_imag)  # its own A: (H, N/2)
    torch.testing.assert_close(A, lin.expand(H, -1), rtol=1e-6, atol=0)  # drawn in float32
    dt = torch.exp(layer.log_dt)  # (H,)
    C = torch.view_as_complex(layer.C[0])  # (H, N/2)
    dtA = dt[:, None] * A
    powers = torch.exp(dtA[..., None] * torch.arange(length, dtype=torch.float64))  # (H, N/2, L)
    K = 2 * torch.einsum("hn,hnl->hl", C * (torch.exp(dtA) - 1) / A, powers).real  # (H, L)
    with torch.no_grad():
        torch.testing.assert_close(layer.kernel(length)[0][0], K, rtol=0, atol=1e-12)
        x = torch.randn(
            2, length, H, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
        )
        lag = torch.arange(length)[:, None] - torch.arange(length)[None, :]  # t - s
        toeplitz = torch.where(lag >= 0, K[:, lag.clamp(min=0)], 0.0)  # (H, t, s)
        y = torch.einsum("hts,bsh->bth", toeplitz, x) + x * layer.D
        z = F.linear(F.gelu(y), layer.out_proj.weight, layer.out_proj.bias)
        expected = z[..., :H] * torch.sigmoid(z[..., H:])  # GLU
        assert mixer(x).dtype == torch.float64
        torch.testing.assert_close(mixer(x), expected, rtol=0, atol=1e-12)


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
        ({"a_dt_max_lr": 1e-3}, "leave it null with selective=true"),
        ({"selective": False, "a_dt_max_lr": 0.0}, "a positive learning-rate cap"),
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
