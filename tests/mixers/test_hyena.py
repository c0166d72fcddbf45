"""hyena: the contract for its variants, then, in float64 from the module's weights, safari's
positional features against their formula, its implicit filters, and the order-2 and order-3
operator against safari's recurrence written out with explicit Toeplitz matrices; the filter's
decay window, accounting, weight decay and errors."""

from __future__ import annotations

import cmath
import math
from typing import Any

import pytest
import torch
from mixer_helpers import randn

from mixerlab.mixers.hyena import HyenaMixer, positional_features
from mixerlab.mixers.testing import check_mixer

D, MAX_LEN = 8, 12


@pytest.mark.parametrize(
    "hparams",
    [{"order": 3}, {"order": 2, "modulate": False, "filter_emb_dim": 3, "filter_order": 8}],
)
def test_hyena_variants_meet_the_contract(hparams: dict[str, Any]) -> None:
    check_mixer("hyena", d_model=D, max_len=MAX_LEN, hparams=hparams)


# --- by hand, in float64 -------------------------------------------------------------------------


def safari_features(s: int, max_len: int, emb_dim: int) -> list[float]:
    """safari's PositionalEmbedding row at offset s: [t, Re z_k.., Im z_k..], z_k =
    exp(-1j f_k w), t = linspace(0, 1, max_len)[s], w = 2 pi s / max_len and
    f = linspace(1e-4, bands - 1, bands), bands = (emb_dim - 1) // 2."""
    bands = (emb_dim - 1) // 2
    f = [1e-4 + (bands - 1 - 1e-4) * k / max(bands - 1, 1) for k in range(bands)]
    z = [cmath.exp(-1j * f_k * 2 * math.pi * s / max_len) for f_k in f]
    return [s / (max_len - 1), *(c.real for c in z), *(c.imag for c in z)]


@pytest.mark.parametrize("emb_dim", [3, 5, 9])
def test_positional_features_are_safaris(emb_dim: int) -> None:
    offsets = torch.arange(1 - MAX_LEN, MAX_LEN)  # an encoder's signed offsets extend the formula
    expected = torch.tensor(
        [safari_features(int(s), MAX_LEN, emb_dim) for s in offsets], dtype=torch.float64
    )
    features = positional_features(offsets, MAX_LEN, emb_dim, torch.float64)
    torch.testing.assert_close(features, expected, rtol=1e-12, atol=1e-12)
    t = torch.linspace(0, 1, MAX_LEN, dtype=torch.float64)  # safari's t
    torch.testing.assert_close(features[MAX_LEN - 1 :, 0], t, rtol=1e-12, atol=1e-12)


def filters_by_hand(mixer: HyenaMixer, offsets: list[int]) -> torch.Tensor:
    """safari's HyenaFilter: h = FFN(PE) with Sin activations, its (N - 1) d outputs ordered
    (channel, filter), times exp(-|t| alpha), alpha = linspace(ln 100 / 1.5, ln 100 / 0.3) over
    them. Returns (N - 1, d, taps)."""
    f = mixer.implicit_filter
    z = torch.tensor([safari_features(s, MAX_LEN, f.emb_dim) for s in offsets], dtype=torch.float64)
    h = z
    for layer in f.layers:
        h = torch.sin(f.freq * (h @ layer.weight.T + layer.bias))
    h = h @ f.out.weight.T  # (taps, (N - 1) d)
    units = h.shape[1]
    slow, fast = math.log(100) / 1.5, math.log(100) / 0.3
    alpha = [slow + (fast - slow) * i / (units - 1) for i in range(units)]
    if f.modulate:
        h = h * torch.exp(-z[:, :1].abs() * torch.tensor(alpha, dtype=torch.float64))
    filters = mixer.order - 1
    return torch.stack([h[:, o::filters].T for o in range(filters)])  # unit c (N - 1) + o


def toeplitz(h: torch.Tensor, length: int, causal: bool) -> torch.Tensor:
    """T (C, L, L) with T[c, t, s] = h[c, offset t - s] (causal: 0 above the diagonal)."""
    matrix = h.new_zeros(h.shape[0], length, length)
    for t in range(length):
        for s in range(t + 1) if causal else range(length):
            matrix[:, t, s] = h[:, t - s if causal else t - s + length - 1]
    return matrix


def hyena_by_hand(mixer: HyenaMixer, x: torch.Tensor, gates: list[int] | None = None):
    """safari's HyenaOperator.forward: x_0..x_{N-1}, v from the short conv of in_proj; for
    each gate x_{N-1}, .., x_1: v = x_i v, v = h_o * v + D_o v; y = out_proj(x_0 v).
    ``gates`` reorders the gates (all N, the last one after the last convolution)."""
    length, n = x.shape[1], mixer.order
    projected = x @ mixer.in_proj.weight.T + mixer.in_proj.bias  # (B, L, (N + 1) d)
    weight, left = mixer.short_conv.weight[:, 0], 2 if mixer.causal else 1  # oldest tap first
    streams = projected * 0 + mixer.short_conv.bias
    for t in range(length):
        for i in range(3):
            if 0 <= t - left + i < length:
                streams[:, t] += weight[:, i] * projected[:, t - left + i]
    *x_, v = streams.split(D, dim=-1)
    offsets = range(length) if mixer.causal else range(1 - length, length)
    filters = filters_by_hand(mixer, list(offsets))
    order = gates or list(range(n - 1, -1, -1))
    for o in range(n - 1):
        v = v * x_[order[o]]
        conv = torch.einsum("cts,bsc->btc", toeplitz(filters[o], length, mixer.causal), v)
        v = conv + mixer.D[o] * v
    return (v * x_[order[-1]]) @ mixer.out_proj.weight.T + mixer.out_proj.bias


def double_hyena(causal: bool, **hparams: Any) -> HyenaMixer:
    torch.manual_seed(0)
    return HyenaMixer(D, causal=causal, max_len=MAX_LEN, **hparams).double().eval()


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "encoder"])
@pytest.mark.parametrize("modulate", [True, False])
def test_hyena_filters_are_safaris(causal: bool, modulate: bool) -> None:
    mixer = double_hyena(causal, order=3, modulate=modulate, filter_emb_dim=7)
    offsets = list(range(MAX_LEN)) if causal else list(range(1 - MAX_LEN, MAX_LEN))
    with torch.no_grad():
        filters = mixer.implicit_filter(torch.tensor(offsets))
        torch.testing.assert_close(filters, filters_by_hand(mixer, offsets), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("length", [7, MAX_LEN])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "encoder"])
@pytest.mark.parametrize("order", [2, 3])
def test_hyena_is_safaris_recurrence(order: int, causal: bool, length: int) -> None:
    mixer = double_hyena(causal, order=order)
    x = randn(2, length, D).double()
    with torch.no_grad():
        y = mixer(x)
        torch.testing.assert_close(y, hyena_by_hand(mixer, x), rtol=1e-10, atol=1e-10)
        # the check tells the gates apart: the same streams in the opposite order differ
        wrong = hyena_by_hand(mixer, x, gates=list(range(order)))
        assert (y - wrong).abs().max() > 1e-3


@pytest.mark.parametrize("causal", [True, False])
def test_hyena_filter_decays_along_the_sequence_when_modulated(causal: bool) -> None:
    """Same seed, same MLP: with the window, the filter keeps its value at offset 0 and fades
    with |offset| in both directions (every channel is down to 5% by max_len); without it, it
    does not fade."""
    length = 64
    offsets = torch.arange(length) if causal else torch.arange(1 - length, length)
    filters = {}
    for modulate in (True, False):
        torch.manual_seed(0)
        mixer = HyenaMixer(D, causal=causal, max_len=length, modulate=modulate)
        with torch.no_grad():
            filters[modulate] = mixer.implicit_filter(offsets)[0].abs()  # (d, taps)
    torch.testing.assert_close(filters[True][:, offsets == 0], filters[False][:, offsets == 0])
    near = offsets.abs() < length // 8
    directions = [offsets >= 3 * length // 4] + ([] if causal else [offsets <= -3 * length // 4])
    for far in directions:
        assert filters[True][:, far].mean() < 0.1 * filters[True][:, near].mean()
        assert filters[False][:, far].mean() > 0.3 * filters[False][:, near].mean()


def test_hyena_accounting_and_weight_decay() -> None:
    mixer = HyenaMixer(D, max_len=MAX_LEN, order=3)
    assert mixer.state_size(10) - mixer.state_size(5) == 2 * D * 5  # N - 1 histories grow
    assert mixer.state_size(0) == 4 * D * 2  # the short convolution's window
    assert mixer.flops_per_token(MAX_LEN) > mixer.flops_per_token(2)
    assert mixer.D.shape == (2, D) and mixer.implicit_filter.out.out_features == 2 * D
    names = {
        n for n, p in mixer.named_parameters() for q in mixer.no_weight_decay_parameters() if p is q
    }
    assert names == {
        "D",
        *(f"implicit_filter.{n}" for n, _ in mixer.implicit_filter.named_parameters()),
    }


def test_hyena_bad_settings_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="needs a positive max_len"):
        HyenaMixer(D)
    with pytest.raises(ValueError, match=r"filter_emb_dim must be odd and at least 3.*got 4"):
        HyenaMixer(D, max_len=MAX_LEN, filter_emb_dim=4)
    with pytest.raises(ValueError, match=r"order must be at least 2 .*got 1"):
        HyenaMixer(D, max_len=MAX_LEN, order=1)
