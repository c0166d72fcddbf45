"""linear_attention and sliding_window: the fast forms against O(L^2) references written out
here, the Taylor feature map, decoding state that stops growing, and the contract for variants."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from mixerlab.mixers.attention import SelfAttention
from mixerlab.mixers.base import build_mixer
from mixerlab.mixers.linear_attention import SUB_CHUNK, LinearAttention
from mixerlab.mixers.sliding_window import SlidingWindowAttention
from mixerlab.mixers.testing import check_mixer

D = 16
L = 10
ATOL = 1e-5

VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("linear_attention", {"feature_map": "taylor", "decay": "gated", "feature_dim": 4}),
    ("linear_attention", {"feature_map": "relu", "decay": "fixed", "normalize": "rms"}),
    ("linear_attention", {"decay": "gated", "chunk_size": 5, "n_heads": 2}),
    ("sliding_window", {"window": 5, "rope": True}),
    ("sliding_window", {"window": 7, "n_heads": 2, "bias": False}),
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in hp.items())}" for name, hp in VARIANTS]


def make(name: str, causal: bool = True, **hparams: Any):
    torch.manual_seed(0)
    return build_mixer(name, D, causal=causal, **hparams).eval()


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def padded_mask() -> torch.Tensor:
    mask = torch.ones(2, L, dtype=torch.bool)
    mask[1, 6:] = False
    return mask


@pytest.mark.parametrize(("name", "hparams"), VARIANTS, ids=IDS)
def test_variant_meets_the_contract(name: str, hparams: dict[str, Any]) -> None:
    """Non-default hyper-parameters, both modes: the contract suite builds the defaults only."""
    check_mixer(name, d_model=D, max_len=24, hparams=hparams)


# --- linear_attention ----------------------------------------------------------------------------


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
    mixer = make("linear_attention", causal, feature_dim=4, chunk_size=chunk_size, **hparams)
    if decay == "gated":  # decays far from 1, so a wrong exponent shows
        torch.nn.init.normal_(mixer.gate_up.bias, -30.0, 10.0)
    x, mask = randn(2, L, D), padded_mask()
    with torch.no_grad():
        expected = naive_linear_attention(mixer, x, mask)
        torch.testing.assert_close(mixer(x, mask)[mask], expected[mask], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "encoder"])
def test_gated_chunks_longer_than_a_sub_chunk_equal_naive_reference(causal: bool) -> None:
    """chunk_size 24 > SUB_CHUNK = 8: chunks of 24 and 13 run over sub-chunks of 8 (13 = 8 + 5)."""
    assert SUB_CHUNK == 8
    mixer = make("linear_attention", causal, decay="gated", feature_dim=4, chunk_size=24)
    torch.nn.init.normal_(mixer.gate_up.bias, -30.0, 10.0)
    x, mask = randn(2, 37, D), torch.ones(2, 37, dtype=torch.bool)
    mask[1, 30:] = False
    with torch.no_grad():
        expected = naive_linear_attention(mixer, x, mask)
        torch.testing.assert_close(mixer(x, mask)[mask], expected[mask], atol=ATOL, rtol=1e-4)


def test_taylor_features_give_second_order_taylor_of_exp() -> None:
    """phi(q).phi(k) = 1 + s + s^2/2 with s = q.k / sqrt(feature_dim), Based's scaling."""
    mixer = make("linear_attention", feature_map="taylor", feature_dim=8)
    q, k = randn(5, 8, seed=2), randn(5, 8, seed=3)
    dots = (mixer._features(q) * mixer._features(k)).sum(dim=-1)
    s = (q * k).sum(dim=-1) / math.sqrt(8)
    torch.testing.assert_close(dots, 1 + s + s**2 / 2)
    assert mixer.phi_dim == 1 + 8 + 64


def test_fixed_decay_follows_retnets_schedule() -> None:
    mixer = make("linear_attention", decay="fixed", n_heads=4)
    expected = 1 - 2.0 ** (-5 - torch.arange(4.0))
    torch.testing.assert_close(mixer.log_gamma.exp(), expected)


def test_strong_gates_underflow_instead_of_overflowing() -> None:
    """alpha ~ exp(-60) per step: factoring exp(b_t) exp(-b_s) would overflow; log space does
    not, in values and gradients."""
    mixer = make("linear_attention", decay="gated", chunk_size=16).train()
    torch.nn.init.constant_(mixer.gate_up.bias, -1000.0)
    x = randn(2, 40, D).requires_grad_()
    mixer(x).square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in mixer.parameters())


def test_decoding_state_does_not_grow() -> None:
    mixer = make("linear_attention", decay="gated")
    assert mixer.state_size(10) == mixer.state_size(1000) == 4 * 16 * (D // 4 + 1)
    state = mixer.init_state(1)
    shapes = []
    with torch.no_grad():
        for t in range(40):
            _, state = mixer.step(randn(1, D, seed=t), state)
            shapes.append(state["S"].shape)
    assert shapes[4] == shapes[39]


def test_linear_attention_flops_stop_growing_at_the_chunk() -> None:
    mixer = make("linear_attention", chunk_size=8)
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


# --- sliding_window ------------------------------------------------------------------------------


def naive_band_attention(mixer: SlidingWindowAttention, x: torch.Tensor, mask: torch.Tensor):
    """Full softmax attention with an explicit (L, L) band mask over real keys."""
    q, k, v = mixer._qkv(x, start=0)
    length = x.shape[1]
    gap = torch.arange(length)[:, None] - torch.arange(length)[None, :]  # t - s
    band = (gap >= 0) & (gap < mixer.window) if mixer.causal else gap.abs() < mixer.window
    allowed = band & mask[:, None, None, :]
    scores = (q @ k.mT / math.sqrt(mixer.head_dim)).masked_fill(~allowed, -math.inf)
    y = scores.softmax(dim=-1) @ v
    return mixer.out(y.transpose(1, 2).reshape(x.shape))


@pytest.mark.parametrize("window", [3, 5, 16], ids=["w3", "w5-divides", "w16-longer-than-L"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "encoder"])
@pytest.mark.parametrize("padded", [False, True])
def test_sliding_window_equals_band_masked_attention(window: int, causal: bool, padded: bool):
    mixer = make("sliding_window", causal, window=window, rope=True)
    x = randn(2, L, D)
    mask = padded_mask() if padded else torch.ones(2, L, dtype=torch.bool)
    with torch.no_grad():
        expected = naive_band_attention(mixer, x, mask)
        torch.testing.assert_close(mixer(x, mask)[mask], expected[mask], atol=ATOL, rtol=0)


def test_window_covering_the_sequence_is_self_attention() -> None:
    local = make("sliding_window", window=L)
    full = SelfAttention(D)
    full.load_state_dict(local.state_dict())
    x = randn(2, L, D)
    torch.testing.assert_close(local(x), full.eval()(x))


def test_sliding_window_state_stops_at_the_window() -> None:
    mixer = make("sliding_window", window=5)
    assert [mixer.state_size(n) for n in (1, 4, 5, 1000)] == [2 * D, 8 * D, 8 * D, 8 * D]
    state = mixer.init_state(1)
    with torch.no_grad():
        for t in range(12):
            _, state = mixer.step(randn(1, D, seed=t), state)
    assert state["k"].shape[2] == state["v"].shape[2] == 4


def test_sliding_window_flops_are_linear_in_length() -> None:
    mixer, encoder = make("sliding_window", window=8), make("sliding_window", False, window=8)
    assert mixer.flops_per_token(80) == mixer.flops_per_token(8000)
    assert encoder.flops_per_token(80) > mixer.flops_per_token(80)
    assert mixer.flops_per_token(8) == SelfAttention(D).flops_per_token(8)


def test_sliding_window_rejects_a_window_that_mixes_nothing() -> None:
    with pytest.raises(ValueError, match="window must be at least 2, got 1"):
        SlidingWindowAttention(D, window=1)
