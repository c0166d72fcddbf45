"""Behaviour of the attention, rnn and conv mixers: the contract for each hyper-parameter variant,
then what is specific to each."""

from __future__ import annotations

import inspect
import math
from typing import Any

import pytest
import torch

from mixerlab.mixers.attention import SelfAttention
from mixerlab.mixers.base import TokenMixer, build_mixer, describe_mixer
from mixerlab.mixers.conv import ConvMixer
from mixerlab.mixers.rnn import RecurrentMixer
from mixerlab.mixers.testing import check_mixer

D = 16
L = 10
ATOL = 1e-5

# (registered name, hparams): every variant runs through every contract check, in both modes.
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("attention", {}),
    ("attention", {"n_heads": 2, "rope": True, "bias": False}),
    ("rnn", {"cell": "lstm"}),
    ("rnn", {"cell": "gru", "n_layers": 2}),
    ("conv", {}),
    ("conv", {"kernel_size": 3, "dilation": 2}),
    ("conv", {"kernel_size": 4, "gate": "none"}),
]
IDS = [
    f"{name}-{'-'.join(f'{k}={v}' for k, v in hp.items()) or 'default'}" for name, hp in VARIANTS
]


def make(name: str, hparams: dict[str, Any], causal: bool, max_len: int | None = None):
    torch.manual_seed(0)
    return build_mixer(name, D, causal=causal, max_len=max_len, **hparams).eval()


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("name", "hparams"), VARIANTS, ids=IDS)
def test_variant_meets_the_contract(name: str, hparams: dict[str, Any]) -> None:
    """Every hyper-parameter variant, in both modes: the contract suite builds defaults only."""
    check_mixer(name, d_model=D, hparams=hparams)


# --- attention -----------------------------------------------------------------------------------


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
    mixer = make("attention", {"n_heads": 4}, causal=causal)
    x = randn(2, L, D)
    mask = torch.ones(2, L, dtype=torch.bool)
    if padded:
        mask[1, 6:] = False
    expected = naive_attention(mixer, x, mask)
    torch.testing.assert_close(mixer(x, mask)[mask], expected[mask], atol=ATOL, rtol=0)


def test_rope_scores_depend_on_relative_offsets_only() -> None:
    """With rope, shifting every position by the same offset leaves the output unchanged."""
    mixer = make("attention", {"rope": True}, causal=True)
    x = randn(1, 4, D)
    q, k, _ = mixer._qkv(x, start=0)
    q_shifted, k_shifted, _ = mixer._qkv(x, start=7)
    scores = q @ k.transpose(-1, -2)
    torch.testing.assert_close(q_shifted @ k_shifted.transpose(-1, -2), scores, atol=1e-4, rtol=0)
    assert not torch.allclose(q_shifted, q)
    without = make("attention", {"rope": False}, causal=True)
    assert not torch.allclose(mixer(x), without(x), atol=1e-3)


def test_attention_dropout_only_in_training() -> None:
    mixer = make("attention", {"dropout": 0.5}, causal=True)
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


# --- rnn -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_uses_the_requested_cell(cell: str) -> None:
    causal, encoder = RecurrentMixer(D, cell=cell), RecurrentMixer(D, cell=cell, causal=False)
    expected = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    assert type(causal.rnn) is expected and not causal.rnn.bidirectional
    assert encoder.rnn.bidirectional and encoder.merge.in_features == 2 * D
    gates = 4 if cell == "lstm" else 3
    assert causal.flops_per_token(L) == gates * 2 * 2 * D * D
    assert encoder.flops_per_token(L) == 2 * gates * 2 * 2 * D * D + 2 * 2 * D * D


def test_rnn_causal_is_the_plain_recurrence() -> None:
    mixer = make("rnn", {"cell": "gru"}, causal=True)
    x = randn(2, L, D)
    expected, _ = mixer.rnn(x)
    torch.testing.assert_close(mixer(x), expected)


def test_rnn_zeroes_padded_outputs() -> None:
    mixer = make("rnn", {}, causal=False)
    mask = torch.ones(2, L, dtype=torch.bool)
    mask[0, 3:] = False
    y = mixer(randn(2, L, D), mask)
    assert (y[~mask] == 0).all()


def test_rnn_rejects_unknown_cell_listing_the_choices() -> None:
    with pytest.raises(ValueError, match="lstm, gru"):
        RecurrentMixer(D, cell="transformer")


# --- conv ----------------------------------------------------------------------------------------


def receptive_field(mixer: TokenMixer, t: int) -> list[int]:
    """Positions whose input changes the output at t (by the gradient of out[t])."""
    x = randn(1, 16, D).requires_grad_()
    mixer(x)[0, t].sum().backward()
    return [s for s in range(16) if x.grad[0, s].abs().sum() > 0]


@pytest.mark.parametrize(
    ("causal", "kernel_size", "dilation", "expected"),
    [
        (True, 4, 1, [5, 6, 7, 8]),
        (True, 3, 2, [4, 6, 8]),
        (False, 3, 2, [6, 8, 10]),
        # Even kernel, centred: the extra position goes to the right (like padding="same").
        (False, 4, 1, [7, 8, 9, 10]),
        (False, 2, 3, [7, 10]),
    ],
)
def test_conv_receptive_field(causal: bool, kernel_size: int, dilation: int, expected) -> None:
    # Without the gate, whose SiLU branch always reads position t itself.
    hparams = {"kernel_size": kernel_size, "dilation": dilation, "gate": "none"}
    assert receptive_field(make("conv", hparams, causal=causal), t=8) == expected


def test_conv_gate_changes_the_projection() -> None:
    gated, plain = ConvMixer(D, gate="silu"), ConvMixer(D, gate="none")
    assert gated.in_proj.out_features == 2 * D and plain.in_proj.out_features == D
    assert gated.flops_per_token(L) - plain.flops_per_token(L) == 2 * D * D
    assert plain.flops_per_token(L) == 2 * D * D + 2 * 4 * D + 2 * D * D


def test_conv_rejects_bad_kernel() -> None:
    with pytest.raises(ValueError, match="kernel_size"):
        ConvMixer(D, kernel_size=0)


def test_conv_without_gate_is_linear_in_its_input() -> None:
    mixer = make("conv", {"gate": "none"}, causal=True)
    a, b = randn(1, L, D), randn(1, L, D, seed=2)
    zero = mixer(torch.zeros_like(a))
    torch.testing.assert_close(mixer(a + b) - zero, (mixer(a) - zero) + (mixer(b) - zero))


@pytest.mark.parametrize("cls", [SelfAttention, RecurrentMixer, ConvMixer])
def test_hparams_are_keyword_only_with_defaults(cls: type[TokenMixer]) -> None:
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]
    assert params and all(p.kind is p.KEYWORD_ONLY for p in params)
    assert all(p.default is not p.empty for p in params)
    assert describe_mixer(cls.registry_name) == inspect.getdoc(cls).splitlines()[0]
