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


def naive_attention(
    mixer: SelfAttention, x: torch.Tensor, mask: torch.Tensor, prefix: list[int] | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim)) v per head, masked with -inf, written out by hand; with a
    ``prefix``, row b's first prefix[b] keys are read by every query too."""
    batch, length, d = x.shape
    q, k, v = mixer.qkv(x).split(d, dim=-1)
    q, k, v = (t.view(batch, length, mixer.n_heads, -1).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(mixer.head_dim)
    allowed = mask[:, None, None, :]
    if mixer.causal:
        reads = torch.ones(batch, 1, length, length, dtype=torch.bool).tril()
        for row, p in enumerate(prefix or []):
            reads[row, :, :, :p] = True
        allowed = allowed & reads
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


@pytest.mark.parametrize("padded", [False, True])
def test_a_bidirectional_prefix_equals_the_naive_reference(padded: bool) -> None:
    mixer = seeded_mixer("attention", D, causal=True, n_heads=4)
    x, prefix = randn(3, L, D), [4, 0, L]
    mask = torch.ones(3, L, dtype=torch.bool)
    if padded:
        mask[1, 6:] = False
    y = mixer(x, mask, prefix=torch.tensor(prefix))
    torch.testing.assert_close(
        y[mask], naive_attention(mixer, x, mask, prefix)[mask], atol=ATOL, rtol=0
    )
    encoder = seeded_mixer("attention", D, causal=False, n_heads=4)
    encoder.load_state_dict(mixer.state_dict())  # a prefix of every position: the encoder
    torch.testing.assert_close(y[2], encoder(x[2:3])[0], atol=ATOL, rtol=0)


def test_a_prefix_is_refused_where_it_cannot_be_read() -> None:
    x, prefix = randn(2, L, D), torch.tensor([3, 3])
    with pytest.raises(ValueError, match=r"cannot read a bidirectional prefix .* pass prefix=None"):
        seeded_mixer("attention", D, causal=False)(x, prefix=prefix)  # an encoder reads all
    with pytest.raises(ValueError, match=r"SlidingWindowAttention\(causal=True\) cannot read"):
        seeded_mixer("sliding_window", D, causal=True, window=4)(x, prefix=prefix)
    with pytest.raises(ValueError, match=r"prefix must be an integer tensor of shape \(2,\)"):
        seeded_mixer("attention", D)(x, prefix=torch.tensor([3.0, 3.0]))


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
