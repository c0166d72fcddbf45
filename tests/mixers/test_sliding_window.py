"""sliding_window: the contract for its variants, then the windowed form against attention
with an explicit band mask, Zoology's band (window W reads keys t - W .. t) in float64, a window
covering the sequence, decoding state that stops at the window, FLOPs linear in length and
errors."""

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
    [{"window": 5, "rope": True}, {"window": 7, "n_heads": 2, "bias": False}, {"window": 1}],
    ids=["w5-rope", "w7-2-heads", "w1"],
)
def test_variant_meets_the_contract(hparams: dict[str, Any]) -> None:
    """Non-default hyper-parameters, both modes: the contract suite builds the defaults only."""
    check_mixer("sliding_window", d_model=D, max_len=24, hparams=hparams)


def naive_band_attention(mixer: SlidingWindowAttention, x: torch.Tensor, mask: torch.Tensor):
    """Full softmax attention with an explicit (L, L) band mask over real keys."""
    q, k, v = mixer._qkv(x, start=0)
    length = x.shape[1]
    gap = torch.arange(length)[:, None] - torch.arange(length)[None, :]  # t - s
    band = (gap >= 0) & (gap <= mixer.window) if mixer.causal else gap.abs() <= mixer.window
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


def zoology_band(length: int, block_size: int) -> torch.Tensor:
    """Zoology's SlidingSelfAttention mask (zoology/mixers/slide_attn.py) as it builds it: for
    query i, keys 0 .. i - block_size - 1 and i + 1 .. are masked; True where a key is read."""
    masked = torch.zeros(length, length, dtype=torch.bool)
    for i in range(length):
        masked[i, 0 : max(0, i - block_size)] = True
        masked[i, i + 1 :] = True
    return ~masked


@pytest.mark.parametrize("n_heads", [1, 2], ids=["zoology-one-head", "two-heads"])
@pytest.mark.parametrize("block_size", [1, 3, 4, 8])
def test_window_counts_like_zoologys_block_size(block_size: int, n_heads: int) -> None:
    """window=W reads keys t - W .. t (W + 1 of them), Zoology's band for block_size=W: float64
    softmax attention under that band from the module's own qkv and out weights."""
    length = 19
    band = zoology_band(length, block_size)
    assert band.sum(dim=1)[block_size:].eq(block_size + 1).all()  # W + 1 keys once t >= W
    mixer = seeded_mixer("sliding_window", D, window=block_size, n_heads=n_heads).double()
    x = randn(2, length, D).double()
    qkv = x @ mixer.qkv.weight.T + mixer.qkv.bias
    q, k, v = (t.unflatten(-1, (n_heads, -1)).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    scores = q @ k.mT / math.sqrt(D // n_heads)  # Zoology's 1 / sqrt(d_model) for one head
    weights = scores.masked_fill(~band, -math.inf).softmax(dim=-1)
    heads = (weights @ v).transpose(1, 2).flatten(2)  # (B, L, d)
    expected = heads @ mixer.out.weight.T + mixer.out.bias
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), expected, atol=1e-12, rtol=1e-10)
        decoded, state = mixer.prefill(x[:, :11])  # then steps: the rolling cache of W keys
        for t in range(11, length):
            y_t, state = mixer.step(x[:, t], state)
            decoded = torch.cat((decoded, y_t[:, None]), dim=1)
    torch.testing.assert_close(decoded, expected, atol=1e-12, rtol=1e-10)
    assert state["k"].shape[2] == block_size


def test_window_covering_the_sequence_is_self_attention() -> None:
    local = seeded_mixer("sliding_window", D, window=L - 1)  # t - (L - 1) <= 0: every key
    full = SelfAttention(D)
    full.load_state_dict(local.state_dict())
    x = randn(2, L, D)
    torch.testing.assert_close(local(x), full.eval()(x))


def test_sliding_window_state_stops_at_the_window() -> None:
    mixer = seeded_mixer("sliding_window", D, window=5)
    assert [mixer.state_size(n) for n in (1, 4, 5, 1000)] == [2 * D, 8 * D, 10 * D, 10 * D]
    state = mixer.init_state(1)
    with torch.no_grad():
        for t in range(12):
            _, state = mixer.step(randn(1, D, seed=t), state)
    assert state["k"].shape[2] == state["v"].shape[2] == 5


def test_sliding_window_flops_are_linear_in_length() -> None:
    mixer = seeded_mixer("sliding_window", D, window=8)
    encoder = seeded_mixer("sliding_window", D, causal=False, window=8)
    assert mixer.flops_per_token(80) == mixer.flops_per_token(8000)
    assert encoder.flops_per_token(80) > mixer.flops_per_token(80)
    assert mixer.flops_per_token(9) == SelfAttention(D).flops_per_token(9)


def test_sliding_window_rejects_a_window_that_mixes_nothing() -> None:
    with pytest.raises(ValueError, match="window must be at least 1, got 0"):
        SlidingWindowAttention(D, window=0)
