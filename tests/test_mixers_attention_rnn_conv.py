"""Behaviour of the attention, rnn and conv mixers: the contract plus what is specific to each."""

from __future__ import annotations

import inspect
import math
from typing import Any

import pytest
import torch

from mixers.attention import SelfAttention
from mixers.base import TokenMixer, build_mixer, describe_mixer
from mixers.conv import ConvMixer
from mixers.rnn import RecurrentMixer

D = 16
L = 10
ATOL = 1e-5

# (registered name, hparams): every variant runs through every contract test, in both modes.
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("attention", {}),
    ("attention", {"n_heads": 2, "rope": True, "bias": False}),
    ("rnn", {"cell": "lstm"}),
    ("rnn", {"cell": "gru", "n_layers": 2}),
    ("conv", {}),
    ("conv", {"kernel_size": 3, "dilation": 2}),
    ("conv", {"kernel_size": 4, "gate": False}),
]
IDS = [
    f"{name}-{'-'.join(f'{k}={v}' for k, v in hp.items()) or 'default'}" for name, hp in VARIANTS
]


def make(name: str, hparams: dict[str, Any], causal: bool, max_len: int | None = None):
    torch.manual_seed(0)
    return build_mixer(name, D, causal=causal, max_len=max_len, **hparams).eval()


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=VARIANTS, ids=IDS)
def variant(request) -> tuple[str, dict[str, Any]]:
    return request.param


@pytest.mark.parametrize("causal", [True, False])
def test_shape_and_finite(variant, causal: bool) -> None:
    mixer = make(*variant, causal=causal)
    y = mixer(randn(3, L, D))
    assert y.shape == (3, L, D)
    assert torch.isfinite(y).all()


def test_causal_output_ignores_the_future(variant) -> None:
    mixer = make(*variant, causal=True)
    x = randn(2, L, D)
    changed = x.clone()
    changed[:, 6:] = randn(2, L - 6, D, seed=2)
    y, y_changed = mixer(x), mixer(changed)
    torch.testing.assert_close(y_changed[:, :6], y[:, :6], atol=ATOL, rtol=0)
    assert not torch.allclose(y_changed[:, 6:], y[:, 6:], atol=1e-3)


def test_encoder_sees_the_future(variant) -> None:
    mixer = make(*variant, causal=False)
    x = randn(2, L, D)
    changed = x.clone()
    changed[:, 1:] = randn(2, L - 1, D, seed=2)
    # Position 0 reads position 1 in every variant (conv's centred window included).
    assert not torch.allclose(mixer(changed)[:, 0], mixer(x)[:, 0], atol=1e-3)


@pytest.mark.parametrize("causal", [True, False])
def test_padding_invariance(variant, causal: bool) -> None:
    """A padded batch equals each sequence run alone, at real positions, whatever the padding."""
    mixer = make(*variant, causal=causal)
    lengths = [L, 7, 2]
    x = randn(len(lengths), L, D)
    mask = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]
    y = mixer(x, mask)
    assert torch.isfinite(y).all()
    for i, n in enumerate(lengths):
        alone = mixer(x[i : i + 1, :n])
        torch.testing.assert_close(y[i : i + 1, :n], alone, atol=ATOL, rtol=0)
    # Different padded content and more padding: the real outputs stay the same.
    noisy = torch.where(mask[..., None], x, 100 * randn(*x.shape, seed=3))
    longer = torch.cat((noisy, randn(3, 4, D, seed=4)), dim=1)
    longer_mask = torch.cat((mask, torch.zeros(3, 4, dtype=torch.bool)), dim=1)
    y_longer = mixer(longer, longer_mask)
    torch.testing.assert_close(y_longer[:, :L][mask], y[mask], atol=ATOL, rtol=0)


@pytest.mark.parametrize("causal", [True, False])
def test_fully_padded_sequence_stays_finite(variant, causal: bool) -> None:
    mixer = make(*variant, causal=causal)
    mask = torch.zeros(2, L, dtype=torch.bool)
    mask[0, :4] = True
    assert torch.isfinite(mixer(randn(2, L, D), mask)).all()


def test_step_equals_forward(variant) -> None:
    mixer = make(*variant, causal=True, max_len=L)
    assert mixer.supports_step
    x = randn(3, L, D)
    state = mixer.init_state(3)
    steps = []
    for t in range(L):
        y_t, state = mixer.step(x[:, t], state)
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, dim=1), mixer(x), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match=f"{L + 1}.*max_len {L}"):
        mixer.step(x[:, 0], state)


def test_encoder_cannot_step(variant) -> None:
    mixer = make(*variant, causal=False)
    with pytest.raises(ValueError, match="causal"):
        mixer.step(randn(1, D), mixer.init_state(1))


@pytest.mark.parametrize("causal", [True, False])
def test_gradient_reaches_every_parameter(variant, causal: bool) -> None:
    mixer = make(*variant, causal=causal).train()
    mask = torch.ones(2, L, dtype=torch.bool)
    mask[1, 5:] = False
    mixer(randn(2, L, D), mask).square().sum().backward()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_max_len_violation_names_both_lengths(variant) -> None:
    mixer = make(*variant, causal=True, max_len=8)
    with pytest.raises(ValueError, match=r"length 9 .*max_len 8"):
        mixer(randn(1, 9, D))


def test_flops_per_token_is_positive(variant) -> None:
    for causal in (True, False):
        assert make(*variant, causal=causal).flops_per_token(L) > 0


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
    hparams = {"kernel_size": kernel_size, "dilation": dilation, "gate": False}
    assert receptive_field(make("conv", hparams, causal=causal), t=8) == expected


def test_conv_gate_changes_the_projection() -> None:
    gated, plain = ConvMixer(D, gate=True), ConvMixer(D, gate=False)
    assert gated.in_proj.out_features == 2 * D and plain.in_proj.out_features == D
    assert gated.flops_per_token(L) - plain.flops_per_token(L) == 2 * D * D
    assert plain.flops_per_token(L) == 2 * D * D + 2 * 4 * D + 2 * D * D


def test_conv_rejects_bad_kernel() -> None:
    with pytest.raises(ValueError, match="kernel_size"):
        ConvMixer(D, kernel_size=0)


def test_conv_without_gate_is_linear_in_its_input() -> None:
    mixer = make("conv", {"gate": False}, causal=True)
    a, b = randn(1, L, D), randn(1, L, D, seed=2)
    zero = mixer(torch.zeros_like(a))
    torch.testing.assert_close(mixer(a + b) - zero, (mixer(a) - zero) + (mixer(b) - zero))


@pytest.mark.parametrize("cls", [SelfAttention, RecurrentMixer, ConvMixer])
def test_hparams_are_keyword_only_with_defaults(cls: type[TokenMixer]) -> None:
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]
    assert params and all(p.kind is p.KEYWORD_ONLY for p in params)
    assert all(p.default is not p.empty for p in params)
    assert describe_mixer(cls.registry_name) == inspect.getdoc(cls).splitlines()[0]
