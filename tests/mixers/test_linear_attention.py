"""linear_attention: the contract for its variants and the retnet and gla presets, then the
chunked form against an O(L^2) reference written out here (every feature map, decay and
normaliser, both modes), RetNet's retention and GLA's gated recurrence in float64 from the
papers' equations, the Taylor feature map, RetNet's decay schedule, strong gates, decoding state
that stops growing, FLOPs and errors."""

from __future__ import annotations

import math
from importlib.resources import files
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from mixer_helpers import randn, seeded_mixer

from mixerlab.mixers.kernels.chunked_linear_attention import SUB_CHUNK
from mixerlab.mixers.linear_attention import FEATURE_MAPS, LinearAttention
from mixerlab.mixers.testing import check_mixer

D = 16
L = 10
ATOL = 1e-5


def right_padded() -> torch.Tensor:
    mask = torch.ones(2, L, dtype=torch.bool)
    mask[1, 6:] = False
    return mask


@pytest.mark.parametrize(
    "hparams",
    [
        {"feature_map": "taylor", "decay": "gated", "feature_dim": 4},
        {"feature_map": "relu", "decay": "fixed", "normalize": "rms"},
        {"decay": "gated", "chunk_size": 5, "n_heads": 2},
        {"feature_map": "identity", "normalize": "group", "output_gate": "swish"},
        {"output_gate": "swish", "decay": "fixed"},
    ],
    ids=["taylor-gated", "relu-fixed-rms", "gated-chunk5", "identity-group-swish", "sum-swish"],
)
def test_variant_meets_the_contract(hparams: dict[str, Any]) -> None:
    """Non-default hyper-parameters, both modes: the contract suite builds the defaults only."""
    check_mixer("linear_attention", d_model=D, max_len=24, hparams=hparams)


def preset(option: str) -> dict[str, Any]:
    """The hyper-parameters of a conf/mixer preset of linear_attention, read without composing."""
    node = yaml.safe_load((files("mixerlab.conf") / "mixer" / f"{option}.yaml").read_text())
    assert node.pop("name") == "linear_attention" and node.pop("label") == option
    return node


@pytest.mark.parametrize("option", ["retnet", "gla"])
def test_preset_meets_the_contract(option: str) -> None:
    check_mixer("linear_attention", d_model=D, max_len=24, hparams=preset(option), perturb=0.05)


def naive_linear_attention(mixer: LinearAttention, x: torch.Tensor, mask: torch.Tensor):
    """Every (query t, key s) pair with its decay prod alpha written out: alpha_{s+1..t} for
    s <= t, and alpha_{t..s-1} for s > t in an encoder; padded keys are skipped."""
    q, k, v, log_alpha = mixer._project(x, None)
    batch, heads, length, _ = q.shape
    if log_alpha is None:
        log_alpha = torch.zeros(batch, heads, length, 1)
    scores = torch.zeros(batch, heads, length, length)
    for t in range(length):
        for s in range(length):
            if s <= t:
                exponent = log_alpha[:, :, s + 1 : t + 1].sum(dim=2)
            elif not mixer.causal:
                exponent = log_alpha[:, :, t:s].sum(dim=2)
            else:
                continue
            pair = (q[:, :, t] * k[:, :, s] * exponent.exp()).sum(dim=-1)  # (B, H)
            scores[:, :, t, s] = pair * mask[:, None, s]
    return mixer._output(scores @ v, x)


# identity features cannot divide by phi(q).z: they are normalised per head instead
FORMS = [(f, n) for f in FEATURE_MAPS for n in ("sum", "rms") if (f, n) != ("identity", "sum")]


@pytest.mark.parametrize("chunk_size", [5, 4], ids=["chunk-divides", "chunk-does-not-divide"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "encoder"])
@pytest.mark.parametrize("decay", ["none", "fixed", "gated"])
@pytest.mark.parametrize(("feature_map", "normalize"), FORMS, ids=["-".join(f) for f in FORMS])
def test_chunked_form_equals_naive_reference(
    feature_map: str, decay: str, normalize: str, causal: bool, chunk_size: int
) -> None:
    hparams = {"feature_map": feature_map, "decay": decay, "normalize": normalize}
    hparams.update(feature_dim=4, chunk_size=chunk_size)
    mixer = seeded_mixer("linear_attention", D, causal=causal, **hparams)
    if decay == "gated":  # decays far from 1, so a wrong exponent shows
        torch.nn.init.normal_(mixer.gate_up.bias, -30.0, 10.0)
    x, mask = randn(2, L, D), right_padded()
    with torch.no_grad():
        expected = naive_linear_attention(mixer, x, mask)
        torch.testing.assert_close(mixer(x, mask)[mask], expected[mask], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "encoder"])
def test_gated_chunks_longer_than_a_sub_chunk_equal_naive_reference(causal: bool) -> None:
    """chunk_size 24 > SUB_CHUNK = 8: chunks of 24 and 13 run over sub-chunks of 8 (13 = 8 + 5)."""
    assert SUB_CHUNK == 8
    hparams = {"decay": "gated", "feature_dim": 4, "chunk_size": 24}
    mixer = seeded_mixer("linear_attention", D, causal=causal, **hparams)
    torch.nn.init.normal_(mixer.gate_up.bias, -30.0, 10.0)
    x, mask = randn(2, 37, D), torch.ones(2, 37, dtype=torch.bool)
    mask[1, 30:] = False
    with torch.no_grad():
        expected = naive_linear_attention(mixer, x, mask)
        torch.testing.assert_close(mixer(x, mask)[mask], expected[mask], atol=ATOL, rtol=1e-4)


# RetNet and GLA from their papers' equations, in float64, from the module's own weights only.
NORM_EPS = 1e-5  # the per-head norms' eps the module documents


def heads_of(mixer: LinearAttention, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q, k (B, H, L, feature_dim) and v (B, H, L, Dv): x W^T + b of the fused projection."""
    width = mixer.n_heads * mixer.feature_dim
    qkv = x @ mixer.qkv.weight.T + mixer.qkv.bias
    q, k, v = qkv.split((width, width, mixer.d_model), dim=-1)
    return tuple(t.unflatten(-1, (mixer.n_heads, -1)).transpose(1, 2) for t in (q, k, v))


def gated_output(mixer: LinearAttention, x: torch.Tensor, normed: torch.Tensor) -> torch.Tensor:
    """(swish(x W_G) * concat_h normed_h) W_O + b_O, the layer's output after the heads."""
    y = normed.transpose(1, 2).flatten(2)  # (B, L, d): heads side by side
    return (F.silu(x @ mixer.out_gate.weight.T) * y) @ mixer.out.weight.T + mixer.out.bias


def randomise(mixer: LinearAttention) -> LinearAttention:
    """Norm gains and biases away from 1 and 0 and decay gates away from 1, so each one shows."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in mixer.named_parameters():
            if name.startswith("norm_") or name == "gate_up.bias":
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) + 0.5)
    return mixer.requires_grad_(False)  # the references below need no graph


def decode(mixer: LinearAttention, x: torch.Tensor, prompt: int) -> torch.Tensor:
    """Prefill ``prompt`` positions, then step through the rest: the recurrent form."""
    outputs, state = mixer.prefill(x[:, :prompt])
    for t in range(prompt, x.shape[1]):
        y_t, state = mixer.step(x[:, t], state)
        outputs = torch.cat((outputs, y_t[:, None]), dim=1)
    return outputs


@pytest.mark.parametrize("chunk_size", [64, 4], ids=["one-chunk", "chunks-of-4"])
def test_retnet_preset_is_retention_with_group_norm_and_swish_gate(chunk_size: int) -> None:
    """RetNet (arXiv 2307.08621) eqs. 5 and 8, per head h: Retention(X) = (Q K^T * D) V with
    D_ts = gamma_h^(t-s) for s <= t, else 0, gamma_h = 1 - 2^(-5-h); Y = GroupNorm_h (mean and
    variance over each head's channels, then its gain and bias); (swish(X W_G) * Y) W_O."""
    hparams = {**preset("retnet"), "chunk_size": chunk_size}
    torch.manual_seed(0)
    mixer = randomise(LinearAttention(D, **hparams).double().eval())
    x = randn(2, 13, D).double()
    q, k, v = heads_of(mixer, x)
    t = torch.arange(13, dtype=torch.float64)
    gamma = 1 - 2.0 ** (-5 - torch.arange(mixer.n_heads, dtype=torch.float64))
    gap = t[:, None] - t[None, :]  # t - s
    D_decay = torch.where(gap >= 0, gamma[:, None, None] ** gap.clamp(min=0), 0.0)  # (H, L, L)
    o = (q @ k.mT * D_decay) @ v  # (B, H, L, Dv)
    mean, var = o.mean(dim=-1, keepdim=True), o.var(dim=-1, unbiased=False, keepdim=True)
    normed = (o - mean) / (var + NORM_EPS).sqrt() * mixer.norm_weight + mixer.norm_bias
    expected = gated_output(mixer, x, normed)
    torch.testing.assert_close(mixer(x), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(decode(mixer, x, prompt=6), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [64, 5], ids=["one-chunk", "chunks-of-5"])
def test_gla_preset_is_the_gated_recurrence_with_rms_norm_and_swish_gate(chunk_size: int) -> None:
    """GLA (arXiv 2312.06635) per head: alpha_t = sigmoid(x_t W_1 W_2 + b)^(1/16) per key
    dimension, S_t = diag(alpha_t) S_{t-1} + k_t^T v_t, o_t = q_t S_t, one position at a time;
    then RMSNorm per head (o / sqrt(mean o^2 + eps), its gain) and (swish(X W_G) * .) W_O."""
    hparams = {**preset("gla"), "chunk_size": chunk_size}
    torch.manual_seed(0)
    mixer = randomise(LinearAttention(D, **hparams).double().eval())
    x = randn(2, 13, D).double()
    q, k, v = heads_of(mixer, x)
    logits = x @ mixer.gate_down.weight.T @ mixer.gate_up.weight.T + mixer.gate_up.bias
    alpha = torch.sigmoid(logits).pow(1 / 16).unflatten(-1, (mixer.n_heads, -1)).transpose(1, 2)
    assert float(alpha.min()) > 0.5 and float(alpha.max()) < 0.999  # decays that show
    S = torch.zeros(2, mixer.n_heads, mixer.feature_dim, mixer.head_dim, dtype=torch.float64)
    o = []
    for t in range(13):
        S = alpha[:, :, t, :, None] * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        o.append((q[:, :, t, :, None] * S).sum(dim=-2))  # q_t S_t: (B, H, Dv)
    o = torch.stack(o, dim=2)
    normed = o / (o.square().mean(dim=-1, keepdim=True) + NORM_EPS).sqrt() * mixer.norm_weight
    expected = gated_output(mixer, x, normed)
    torch.testing.assert_close(mixer(x), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(decode(mixer, x, prompt=6), expected, rtol=1e-10, atol=1e-12)


def test_taylor_features_give_second_order_taylor_of_exp() -> None:
    """phi(q).phi(k) = 1 + s + s^2/2 with s = q.k / sqrt(feature_dim), Based's scaling."""
    mixer = seeded_mixer("linear_attention", D, feature_map="taylor", feature_dim=8)
    q, k = randn(5, 8, seed=2), randn(5, 8, seed=3)
    dots = (mixer._features(q) * mixer._features(k)).sum(dim=-1)
    s = (q * k).sum(dim=-1) / math.sqrt(8)
    torch.testing.assert_close(dots, 1 + s + s**2 / 2)
    assert mixer.phi_dim == 1 + 8 + 64


def test_fixed_decay_follows_retnets_schedule() -> None:
    mixer = seeded_mixer("linear_attention", D, decay="fixed", n_heads=4)
    expected = 1 - 2.0 ** (-5 - torch.arange(4.0))
    torch.testing.assert_close(mixer.log_gamma().exp(), expected)
    torch.testing.assert_close(mixer.double().log_gamma().exp(), expected.double(), rtol=0, atol=0)


def test_strong_gates_underflow_instead_of_overflowing() -> None:
    """alpha ~ exp(-60) per step: factoring exp(b_t) exp(-b_s) would overflow; log space does
    not, in values and gradients."""
    mixer = seeded_mixer("linear_attention", D, decay="gated", chunk_size=16).train()
    torch.nn.init.constant_(mixer.gate_up.bias, -1000.0)
    x = randn(2, 40, D).requires_grad_()
    mixer(x).square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in mixer.parameters())


def test_decoding_state_does_not_grow() -> None:
    mixer = seeded_mixer("linear_attention", D, decay="gated")
    assert mixer.state_size(10) == mixer.state_size(1000) == 4 * 16 * (D // 4 + 1)
    state = mixer.init_state(1)
    shapes = []
    with torch.no_grad():
        for t in range(40):
            _, state = mixer.step(randn(1, D, seed=t), state)
            shapes.append(state["S"].shape)
    assert shapes[4] == shapes[39]


def test_linear_attention_flops_stop_growing_at_the_chunk() -> None:
    mixer = seeded_mixer("linear_attention", D, chunk_size=8)
    assert mixer.flops_per_token(100) == mixer.flops_per_token(10_000)
    assert mixer.flops_per_token(4) < mixer.flops_per_token(8)
    gated = seeded_mixer("linear_attention", D, chunk_size=8, output_gate="swish")
    assert gated.flops_per_token(100) == mixer.flops_per_token(100) + 2 * D * D  # x W_G


@pytest.mark.parametrize(
    ("hparams", "message"),
    [
        ({"feature_map": "softmax"}, "unknown feature_map 'softmax'; choose one of: identity"),
        ({"decay": "learned"}, "unknown decay 'learned'"),
        ({"normalize": "layer"}, "unknown normalize 'layer'"),
        ({"output_gate": "sigmoid"}, "unknown output_gate 'sigmoid'; choose one of: none, swish"),
        ({"feature_map": "identity"}, "cannot divide by it \\(normalize 'sum'\\)"),
        ({"feature_dim": 0}, "feature_dim and chunk_size must be at least 1"),
        ({"n_heads": 3}, "divisible by n_heads 3"),
    ],
)
def test_linear_attention_rejects_bad_hyper_parameters(hparams: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LinearAttention(D, **hparams)
