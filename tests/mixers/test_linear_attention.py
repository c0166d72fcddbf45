"""linear_attention: the contract for its variants, then the chunked form against an O(L^2)
reference written out here (every feature map, decay and normaliser, both modes), the Taylor
feature map, RetNet's decay schedule, strong gates, decoding state that stops growing, FLOPs and
errors."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from mixer_helpers import randn, seeded_mixer

from mixerlab.mixers.kernels.chunked_linear_attention import SUB_CHUNK
from mixerlab.mixers.linear_attention import LinearAttention
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
    ],
    ids=["taylor-gated", "relu-fixed-rms", "gated-chunk5"],
)
def test_variant_meets_the_contract(hparams: dict[str, Any]) -> None:
    """Non-default hyper-parameters, both modes: the contract suite builds the defaults only."""
    check_mixer("linear_attention", d_model=D, max_len=24, hparams=hparams)


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
    return mixer._output(scores @ v)


@pytest.mark.parametrize("chunk_size", [5, 4], ids=["chunk-divides", "chunk-does-not-divide"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "encoder"])
@pytest.mark.parametrize("normalize", ["sum", "rms"])
@pytest.mark.parametrize("decay", ["none", "fixed", "gated"])
@pytest.mark.parametrize("feature_map", ["elu", "relu", "taylor"])
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
    torch.testing.assert_close(mixer.log_gamma.exp(), expected)


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


@pytest.mark.parametrize(
    ("hparams", "message"),
    [
        ({"feature_map": "softmax"}, "unknown feature_map 'softmax'; choose one of: elu"),
        ({"decay": "learned"}, "unknown decay 'learned'"),
        ({"normalize": "layer"}, "unknown normalize 'layer'"),
        ({"feature_dim": 0}, "feature_dim and chunk_size must be at least 1"),
        ({"n_heads": 3}, "divisible by n_heads 3"),
    ],
)
def test_linear_attention_rejects_bad_hyper_parameters(hparams: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LinearAttention(D, **hparams)
