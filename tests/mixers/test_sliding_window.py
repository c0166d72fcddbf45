"""sliding_window: the contract for its variants, then the windowed form against attention
with an explicit band mask, a window covering the sequence, decoding state that stops at the
window, FLOPs linear in length and errors."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from mixer_helpers import randn, seeded_mixer

from mixerlab.mixers.attention import SelfAttention
from mixerlab.mixers.sliding_window import SlidingWindowAttention
from mixerlab.mixers.testing import check_mixer

D = 16
L = 10
ATOL = 1e-5


@pytest.mark.parametrize(
    "hparams",
    [{"window": 5, "rope": True}, {"window": 7, "n_heads": 2, "bias": False}],
    ids=["w5-rope", "w7-2-heads"],
)
def test_variant_meets_the_contract(hparams: dict[str, Any]) -> None:
    """Non-default hyper-parameters, both modes: the contract suite builds the defaults only."""
    check_mixer("sliding_window", d_model=D, max_len=24, hparams=hparams)


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
    mixer = seeded_mixer("sliding_window", D, causal=causal, window=window, rope=True)
    x = randn(2, L, D)
    mask = torch.ones(2, L, dtype=torch.bool)
    if padded:
        mask[1, 6:] = False
    with torch.no_grad():
        expected = naive_band_attention(mixer, x, mask)
        torch.testing.assert_close(mixer(x, mask)[mask], expected[mask], atol=ATOL, rtol=0)


def test_window_covering_the_sequence_is_self_attention() -> None:
    local = seeded_mixer("sliding_window", D, window=L)
    full = SelfAttention(D)
    full.load_state_dict(local.state_dict())
    x = randn(2, L, D)
    torch.testing.assert_close(local(x), full.eval()(x))


def test_sliding_window_state_stops_at_the_window() -> None:
    mixer = seeded_mixer("sliding_window", D, window=5)
    assert [mixer.state_size(n) for n in (1, 4, 5, 1000)] == [2 * D, 8 * D, 8 * D, 8 * D]
    state = mixer.init_state(1)
    with torch.no_grad():
        for t in range(12):
            _, state = mixer.step(randn(1, D, seed=t), state)
    assert state["k"].shape[2] == state["v"].shape[2] == 4


def test_sliding_window_flops_are_linear_in_length() -> None:
    mixer = seeded_mixer("sliding_window", D, window=8)
    encoder = seeded_mixer("sliding_window", D, causal=False, window=8)
    assert mixer.flops_per_token(80) == mixer.flops_per_token(8000)
    assert encoder.flops_per_token(80) > mixer.flops_per_token(80)
    assert mixer.flops_per_token(8) == SelfAttention(D).flops_per_token(8)


def test_sliding_window_rejects_a_window_that_mixes_nothing() -> None:
    with pytest.raises(ValueError, match="window must be at least 2, got 1"):
        SlidingWindowAttention(D, window=1)
