"""hyena: the contract for its variants, then the operator against its equations (the long
convolutions by F.conv1d), the filter's decay window, accounting, weight decay and errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from mixer_helpers import conv1d_reference, randn

from mixerlab.mixers.hyena import HyenaMixer
from mixerlab.mixers.testing import check_mixer

D, MAX_LEN = 8, 12


@pytest.mark.parametrize(
    "hparams",
    [{"order": 3}, {"order": 1, "modulate": False, "filter_emb_dim": 3, "filter_order": 8}],
)
def test_hyena_variants_meet_the_contract(hparams: dict[str, Any]) -> None:
    check_mixer("hyena", d_model=D, max_len=MAX_LEN, hparams=hparams)


def hyena_by_the_equations(mixer: HyenaMixer, x: torch.Tensor) -> torch.Tensor:
    """z_1 = v, z_{n+1} = x_n (h_n * z_n + D_n z_n), y = out_proj(z_{N+1}), with F.conv1d."""
    length = x.shape[1]
    streams = mixer.in_proj(x).transpose(1, 2)  # (B, (N + 1) d, L)
    padding = (2, 0) if mixer.causal else (1, 1)
    streams = mixer.short_conv(F.pad(streams, padding))
    *gates, z = streams.split(D, dim=1)
    offsets = torch.arange(length) if mixer.causal else torch.arange(1 - length, length)
    filters = mixer.implicit_filter(offsets)  # (N d, taps)
    for n, gate in enumerate(gates):
        h = filters[n * D : (n + 1) * D]
        z = gate * (conv1d_reference(z, h, mixer.causal) + z * mixer.D[n, :, None])
    return mixer.out_proj(z.transpose(1, 2))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("order", [2, 3])
def test_hyena_follows_the_order_n_recurrence(causal: bool, order: int) -> None:
    torch.manual_seed(0)
    mixer = HyenaMixer(D, causal=causal, max_len=MAX_LEN, order=order).eval()
    x = randn(2, 9, D)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), hyena_by_the_equations(mixer, x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("causal", [True, False])
def test_hyena_filter_decays_along_the_sequence_when_modulated(causal: bool) -> None:
    """Same seed, same MLP: with the window, the filter keeps its value at offset 0 and fades
    with |offset| in both directions (every channel is down to 1% by 150% of max_len); without
    it, it does not fade."""
    length = 64
    offsets = torch.arange(length) if causal else torch.arange(1 - length, length)
    filters = {}
    for modulate in (True, False):
        torch.manual_seed(0)
        mixer = HyenaMixer(D, causal=causal, max_len=length, modulate=modulate)
        with torch.no_grad():
            filters[modulate] = mixer.implicit_filter(offsets).abs()  # (2 d, taps)
    torch.testing.assert_close(filters[True][:, offsets == 0], filters[False][:, offsets == 0])
    near = offsets.abs() < length // 8
    directions = [offsets >= 3 * length // 4] + ([] if causal else [offsets <= -3 * length // 4])
    for far in directions:
        assert filters[True][:, far].mean() < 0.1 * filters[True][:, near].mean()
        assert filters[False][:, far].mean() > 0.3 * filters[False][:, near].mean()


def test_hyena_accounting_and_weight_decay() -> None:
    mixer = HyenaMixer(D, max_len=MAX_LEN, order=3)
    assert mixer.state_size(10) - mixer.state_size(5) == 3 * D * 5  # the histories grow
    assert mixer.state_size(0) == 4 * D * 2  # the short convolution's window
    assert mixer.flops_per_token(MAX_LEN) > mixer.flops_per_token(2)
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
    with pytest.raises(ValueError, match="order must be at least 1"):
        HyenaMixer(D, max_len=MAX_LEN, order=0)
