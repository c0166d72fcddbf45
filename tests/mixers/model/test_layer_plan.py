"""Which mixer each layer gets: one registered mixer in every layer, or a hybrid's pattern
repeated over the depth (each entry with its own hyper-parameters), rotary positions passed to
the mixers that take them, and clear errors for a pattern that does not fit."""

from __future__ import annotations

from typing import Any

import pytest

from mixerlab.mixers import SequenceModel
from mixerlab.mixers.model.layer_plan import layer_plan


def test_a_pattern_repeats_over_the_depth_and_each_entry_keeps_its_hyper_parameters() -> None:
    plan = layer_plan(["conv", {"name": "attention", "n_heads": 2}], None, 4)
    assert plan == [("conv", {}), ("attention", {"n_heads": 2})] * 2
    assert layer_plan("gmlp", {"d_ffn": 8}, 2) == [("gmlp", {"d_ffn": 8})] * 2
    by_name = layer_plan("hybrid", {"pattern": ["conv", {"name": "attention", "n_heads": 2}]}, 4)
    assert by_name == plan


@pytest.mark.parametrize(
    ("mixer", "hparams", "n_layers", "problem"),
    [
        (["conv", "attention"], None, 3, "must divide the depth evenly"),
        ([], None, 2, "must divide the depth evenly"),
        (["conv", 3], None, 2, "pattern entry 1 is 3"),
        (["conv"], {"kernel_size": 2}, 2, "each entry carries its own"),
        ("hybrid", {"pattern": "conv"}, 2, "a list of layer specs.*got the string 'conv'"),
        ("hybrid", {"patern": ["conv"]}, 2, r"unknown hyper-parameter\(s\) patern"),
    ],
)
def test_a_bad_pattern_is_refused_with_the_fix(
    mixer: Any, hparams: Any, n_layers: int, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        layer_plan(mixer, hparams, n_layers)


def test_rope_reaches_the_mixers_that_take_it_and_is_refused_when_none_does() -> None:
    model = SequenceModel(11, 16, 2, mixer=["conv", "attention"], max_len=8, pos="rope")
    assert model.blocks[1].mixer.rotary is not None and not hasattr(model.blocks[0].mixer, "rotary")
    with pytest.raises(ValueError, match="no 'rope' hyper-parameter"):
        SequenceModel(11, 16, 2, mixer=["conv", "rnn"], max_len=8, pos="rope")
