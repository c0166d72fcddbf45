"""rnn: the contract for its cells, then the cell it builds, the plain recurrence it is when
causal, padded outputs and errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from mixer_helpers import randn, seeded_mixer

from mixerlab.mixers.rnn import RecurrentMixer
from mixerlab.mixers.testing import check_mixer

D = 16
L = 10


@pytest.mark.parametrize(
    "hparams", [{"cell": "lstm"}, {"cell": "gru", "n_layers": 2}], ids=["lstm", "gru-2-layers"]
)
def test_variant_meets_the_contract(hparams: dict[str, Any]) -> None:
    """Every hyper-parameter variant, in both modes: the contract suite builds defaults only."""
    check_mixer("rnn", d_model=D, hparams=hparams)


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
    mixer = seeded_mixer("rnn", D, causal=True, cell="gru")
    x = randn(2, L, D)
    expected, _ = mixer.rnn(x)
    torch.testing.assert_close(mixer(x), expected)


def test_rnn_zeroes_padded_outputs() -> None:
    mixer = seeded_mixer("rnn", D, causal=False)
    mask = torch.ones(2, L, dtype=torch.bool)
    mask[0, 3:] = False
    y = mixer(randn(2, L, D), mask)
    assert (y[~mask] == 0).all()


def test_rnn_rejects_unknown_cell_listing_the_choices() -> None:
    with pytest.raises(ValueError, match="lstm, gru"):
        RecurrentMixer(D, cell="transformer")
