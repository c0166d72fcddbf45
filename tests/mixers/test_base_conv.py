"""base_conv: the contract for its short and long forms, then Zoology's equation
y = conv(u) * (W u + b) + u written out in float64 from the module's weights (explicit Toeplitz
matrices, Zoology's positional features and filter MLP by hand), Zoology's Figure 2 preset built
from its YAML, accounting, init and errors."""

from __future__ import annotations

import cmath
import math
from importlib.resources import files
from typing import Any

import pytest
import torch
import yaml
from mixer_helpers import randn

from mixerlab.mixers import SequenceModel, build_mixer
from mixerlab.mixers.base_conv import BaseConvMixer
from mixerlab.mixers.testing import check_mixer

D, MAX_LEN = 8, 12
FORMS = {
    "short3": {"kernel_size": 3},
    "short4": {"kernel_size": 4},
    "implicit": {"kernel_size": -1},
    "explicit": {"kernel_size": -1, "implicit": False},
}


@pytest.mark.parametrize("hparams", FORMS.values(), ids=FORMS.keys())
def test_base_conv_meets_the_contract_in_both_modes(hparams: dict[str, Any]) -> None:
    report = check_mixer("base_conv", d_model=16, max_len=MAX_LEN, hparams=hparams)
    assert {o.causal for o in report.outcomes if o.outcome == "passed"} == {True, False}


# --- the equation, by hand in float64 ------------------------------------------------------------


def zoology_features(s: int, max_len: int) -> list[float]:
    """Zoology's PositionalEmbedding(3, max_len) at offset s: [t, Re, Im] of exp(-1j f w),
    t = linspace(0, 1, max_len)[s], w = 2 pi s / max_len, f = linspace(1e-4, 0, 1) = 1e-4."""
    z = cmath.exp(-1j * 1e-4 * 2 * math.pi * s / max_len)
    return [s / (max_len - 1), z.real, z.imag]


def filter_tap(mixer: BaseConvMixer, s: int) -> torch.Tensor:
    """The long filter at offset s, (d,): Zoology's MLP over the features, or the free taps."""
    if not mixer.implicit:
        return mixer.filter[:, s if mixer.causal else s + MAX_LEN - 1]
    first, _, last = mixer.filter_mlp
    z = torch.tensor(zoology_features(s, MAX_LEN), dtype=torch.float64)
    return last.weight @ torch.relu(first.weight @ z + first.bias) + last.bias


def conv_matrices(mixer: BaseConvMixer, length: int) -> torch.Tensor:
    """T (d, L, L) with conv(u)[t, c] = sum_s T[c, t, s] u[s, c] (+ bias or + u)."""
    matrix = torch.zeros(D, length, length, dtype=torch.float64)
    for t in range(length):
        for s in range(length):
            if mixer.kernel_size == -1 and (s <= t or not mixer.causal):
                matrix[:, t, s] = filter_tap(mixer, t - s)
            elif mixer.kernel_size > 0:  # Conv1d's weight is oldest tap first
                k = mixer.kernel_size
                index = s - t + (k - 1 if mixer.causal else (k - 1) // 2)
                if 0 <= index < k:
                    matrix[:, t, s] = mixer.conv.weight[:, 0, index]
    return matrix


def base_conv_by_hand(
    mixer: BaseConvMixer, u: torch.Tensor, inner_skip: bool = True, outer_skip: bool = True
) -> torch.Tensor:
    """y = conv(u) * (u W^T + b) + u on u (B, L, d); a long conv(u) is h * u + u."""
    conv = torch.einsum("cts,bsc->btc", conv_matrices(mixer, u.shape[1]), u)
    if mixer.kernel_size > 0:
        conv = conv + mixer.conv.bias
    elif inner_skip:
        conv = conv + u
    y = conv * (u @ mixer.projection.weight.T + mixer.projection.bias)
    return y + u if outer_skip else y


def double_mixer(causal: bool, **hparams: Any) -> BaseConvMixer:
    torch.manual_seed(0)
    return build_mixer("base_conv", D, causal=causal, max_len=MAX_LEN, **hparams).double()


@pytest.mark.parametrize("length", [5, MAX_LEN])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "encoder"])
@pytest.mark.parametrize("form", FORMS)
def test_base_conv_is_zoologys_equation(form: str, causal: bool, length: int) -> None:
    mixer = double_mixer(causal, **FORMS[form])
    u = randn(2, length, D).double()
    with torch.no_grad():
        torch.testing.assert_close(mixer(u), base_conv_by_hand(mixer, u), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("form", ["implicit", "explicit"])
def test_the_equation_tells_the_skips_apart(form: str) -> None:
    """The check above would fail without either +u: each moves the output by O(1)."""
    mixer = double_mixer(True, **FORMS[form])
    u = randn(2, MAX_LEN, D).double()
    with torch.no_grad():
        y = mixer(u)
        for wrong in ({"inner_skip": False}, {"outer_skip": False}):
            assert (y - base_conv_by_hand(mixer, u, **wrong)).abs().max() > 0.1


def test_base_conv_has_no_output_projection() -> None:
    for hparams in FORMS.values():
        mixer = double_mixer(True, **hparams)
        linears = [n for n, m in mixer.named_modules() if isinstance(m, torch.nn.Linear)]
        assert linears[0] == "projection" and mixer.output_projections() == []
        assert all(n.startswith("filter_mlp") for n in linears[1:])


# --- Zoology's Figure 2 preset -------------------------------------------------------------------


def preset(option: str) -> dict[str, Any]:
    return yaml.safe_load((files("mixerlab.conf") / "mixer" / f"{option}.yaml").read_text())


def layer_norm_by_hand(norm: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(dim=-1, keepdim=True)
    var = (centred**2).mean(dim=-1, keepdim=True)
    return centred / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def test_zoology_figure2_preset_is_kernel_3_then_the_long_implicit_filter() -> None:
    """conf/mixer/baseconv.yaml: Zoology's kernel_size [3, -1] over its 2 layers; built through
    the registry, each layer is x + base_conv(norm(x)), the long one with its implicit filter."""
    node = preset("baseconv")
    assert node["name"] == "hybrid" and node["label"] == "baseconv"
    model = SequenceModel(11, D, 2, mixer="hybrid", mixer_hparams={"pattern": node["pattern"]})
    layers = [block.mixer for block in model.blocks]
    assert [(type(m), m.kernel_size, m.implicit) for m in layers] == [
        (BaseConvMixer, 3, True),
        (BaseConvMixer, -1, True),
    ]
    assert hasattr(layers[1], "filter_mlp") and not hasattr(layers[1], "filter")
    torch.manual_seed(0)
    hybrid = build_mixer("hybrid", D, max_len=MAX_LEN, pattern=node["pattern"]).double()
    x = randn(2, MAX_LEN, D).double()
    expected = x
    for norm, layer in zip(hybrid.norms, hybrid.layers, strict=True):
        expected = expected + base_conv_by_hand(layer, layer_norm_by_hand(norm, expected))
    with torch.no_grad():
        torch.testing.assert_close(hybrid(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("option", ["based", "zoology_hybrid", "based_sliding"])
def test_zoology_presets_open_with_a_short_base_conv(option: str) -> None:
    assert preset(option)["pattern"][0] == {"name": "base_conv", "kernel_size": 3}


# --- accounting, init, errors --------------------------------------------------------------------


def test_base_conv_accounting_and_init() -> None:
    short, long = BaseConvMixer(64, kernel_size=3), BaseConvMixer(64, max_len=256, kernel_size=-1)
    assert short.state_size(10) == short.state_size(100) == 64 * 2  # the last k - 1 inputs
    assert long.state_size(10) == 64 * 10 and long.state_size(20) == 64 * 20
    assert short.flops_per_token(256) == 2 * 64 * 64 + 2 * 3 * 64 + 2 * 64
    fft = 64 * (10 * math.log2(2 * 256) + 6)
    assert long.flops_per_token(256) == pytest.approx(2 * 64 * 64 + fft + 3 * 64)
    torch.manual_seed(0)
    explicit = BaseConvMixer(64, max_len=256, kernel_size=-1, implicit=False)
    assert abs(float(explicit.filter.detach().std()) - 1.0) < 0.02  # Zoology's randn taps
    two_sided = BaseConvMixer(4, causal=False, max_len=6, kernel_size=-1, implicit=False)
    assert two_sided.filter.shape == (4, 2 * 6 - 1)  # offsets -5..5


def test_base_conv_bad_settings_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"kernel_size=-1.*needs a positive max_len, got None"):
        BaseConvMixer(D, kernel_size=-1)
    with pytest.raises(ValueError, match=r"kernel_size must be -1 \(long\) or at least 1, got 0"):
        BaseConvMixer(D, kernel_size=0)
    with pytest.raises(ValueError, match=r"implicit=False .* needs kernel_size=-1"):
        BaseConvMixer(D, kernel_size=3, implicit=False)
