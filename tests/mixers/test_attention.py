"""attention: the contract for its hyper-parameter variants, then softmax attention against a
version written out by hand, rotary positions, dropout, FLOPs and errors."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from mixer_helpers import randn, seeded_mixer

from mixerlab.mixers.attention import SelfAttention
from mixerlab.mixers.testing import check_mixer

D = 16
L = 10
ATOL = 1e-5


@pytest.mark.parametrize(
    "hparams", [{}, {"n_heads": 2, "rope": True, "bias": False}], ids=["default", "rope"]
)
def test_variant_meets_the_contract(hparams: dict[str, Any]) -> None:
    """Every hyper-parameter variant, in both modes: the contract suite builds defaults only."""
    check_mixer("attention", d_model=D, hparams=hparams)


def naive_attention(mixer: SelfAttention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim)) v per head, masked with -inf, written out by hand."""
    batch, length, d = x.shape
    q, k, v = mixer.qkv(x).split(d, dim=-1)
    q, k, v = (t.view(batch, length, mixer.n_heads, -1).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(mixer.head_dim)
    allowed = mask[:, None, None, :]
    if mixer.causal:
        allowed = allowed & torch.ones(length, length, dtype=torch.bool).tril()
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    return mixer.out((weights @ v).transpose(1, 2).reshape(batch, length, d))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("padded", [False, True])
def test_attention_equals_naive_reference(causal: bool, padded: bool) -> None:
    mixer = seeded_mixer("attention", D, causal=causal, n_heads=4)
    x = randn(2, L, D)
    mask = torch.ones(2, L, dtype=torch.bool)
    if padded:
        mask[1, 6:] = False
    expected = naive_attention(mixer, x, mask)
    torch.testing.assert_close(mixer(x, mask)[mask], expected[mask], atol=ATOL, rtol=0)


def test_rope_scores_depend_on_relative_offsets_only() -> None:
    """With rope, shifting every position by the same offset leaves the output unchanged."""
    mixer = seeded_mixer("attention", D, causal=True, rope=True)
    x = randn(1, 4, D)
    q, k, _ = mixer._qkv(x, start=0)
    q_shifted, k_shifted, _ = mixer._qkv(x, start=7)
    scores = q @ k.transpose(-1, -2)
    torch.testing.assert_close(q_shifted @ k_shifted.transpose(-1, -2), scores, atol=1e-4, rtol=0)
    assert not torch.allclose(q_shifted, q)
    without = seeded_mixer("attention", D, causal=True, rope=False)
    assert not torch.allclose(mixer(x), without(x), atol=1e-3)


def test_attention_dropout_only_in_training() -> None:
    mixer = seeded_mixer("attention", D, causal=True, dropout=0.5)
    x = randn(2, L, D)
    torch.testing.assert_close(mixer(x), mixer(x))
    mixer.train()
    assert not torch.allclose(mixer(x), mixer(x))


def test_attention_flops() -> None:
    causal = SelfAttention(D, causal=True)
    encoder = SelfAttention(D, causal=False)
    assert encoder.flops_per_token(L) == 8 * D * D + 4 * L * D
    assert causal.flops_per_token(L) == 8 * D * D + 2 * L * D


def test_attention_rejects_heads_not_dividing_d_model() -> None:
    with pytest.raises(ValueError, match="divisible by n_heads 3"):
        SelfAttention(D, n_heads=3)
