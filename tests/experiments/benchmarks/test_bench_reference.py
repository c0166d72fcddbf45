"""``mixerlab bench reference``'s pairs: every built-in family is raced against a peer or says why
not, and each pair builds models of the same task at a like size that train."""

from __future__ import annotations

import pytest
import torch

from mixerlab.experiments.benchmarks.peers import (
    NO_PEER,
    RACED_MIXER,
    decoder_of,
    race_decoding,
    reference_builders,
)
from mixerlab.experiments.benchmarks.speed import VOCAB, BareTrainer, Shape, random_batch
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


@pytest.mark.parametrize("family", list(PAIRS))
def test_each_side_decodes_what_its_forward_computes(family: str) -> None:
    """Where a side has an incremental path, the logits it gives after each token equal its
    full forward's at that position: the race times real decoding."""
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (2, 24), generator=generator)
    for name, build in PAIRS[family].items():
        torch.manual_seed(0)
        model = build().eval()
        decoder = decoder_of(name, model)
        if decoder is None:
            assert family in ("gmlp", "linear_attention", "sliding_window"), name
            continue
        with torch.no_grad():
            full = model(tokens)
            stepped = [decoder.start(tokens[:, :16])]
            stepped += [decoder.next(tokens[:, position]) for position in range(16, 23)]
        torch.testing.assert_close(torch.stack(stepped, 1), full[:, 15:23], atol=1e-4, rtol=1e-4)


def test_the_decoding_race_reports_both_sides_or_none() -> None:
    report = race_decoding(PAIRS["mamba"], SHAPE, repeats=1, tokens=4)
    assert report is not None and report["prompt"] == SHAPE.seq_len - 4
    assert len(report["tokens_per_s"]) == 2 and report["ratio"] > 0
    assert race_decoding(PAIRS["gmlp"], SHAPE, repeats=1, tokens=4) is None
