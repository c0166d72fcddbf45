"""``mixerlab bench reference``'s pairs: every built-in family is raced against a peer or says why
not, and each pair builds models of the same task at a like size that train."""

from __future__ import annotations

import pytest
import torch

from mixerlab.experiments.benchmarks.speed import (
    NO_PEER,
    RACED_MIXER,
    VOCAB,
    BareTrainer,
    Shape,
    random_batch,
    reference_builders,
)
from mixerlab.mixers import available_mixers, count_params, get_mixer_class

SHAPE = Shape(d_model=64, n_layers=2, n_heads=4, seq_len=64, batch_size=2)
PAIRS = reference_builders(SHAPE)


def test_every_built_in_family_is_raced_or_says_why_not() -> None:
    built_in = {
        name
        for name in available_mixers()
        if get_mixer_class(name).__module__.startswith("mixerlab.mixers.")
    }
    raced = {RACED_MIXER.get(family, family) for family in PAIRS}
    assert built_in - raced <= set(NO_PEER)
    assert not raced & set(NO_PEER)
    assert all(reason for reason in NO_PEER.values())


@pytest.mark.parametrize("family", list(PAIRS))
def test_each_pair_predicts_the_next_byte_at_a_like_size_and_trains(family: str) -> None:
    batch = random_batch(SHAPE)
    sizes = []
    for name, build in PAIRS[family].items():
        torch.manual_seed(0)
        model = build()
        logits = model(batch[:, :-1])
        assert logits.shape == (SHAPE.batch_size, SHAPE.seq_len, VOCAB), name
        before = [p.detach().clone() for p in model.parameters()]
        BareTrainer(model, batch).step()
        assert any(
            not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)
        ), name
        sizes.append(count_params(model))
    ours, theirs = sizes
    assert abs(ours - theirs) <= 0.2 * theirs, f"{family}: {ours:,} against {theirs:,} params"
