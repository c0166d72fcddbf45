"""The synthetic seq2seq tasks: each target is its source's rearrangement (or sum) and ends with
the end token; batches carry the source and the target shifted right after the start token."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixerlab.lightning_modules.tasks import IGNORE_INDEX, PAD_ID, build_task, get_task_class
from mixerlab.lightning_modules.tasks._base import BOS_ID, EOS_ID
from mixerlab.lightning_modules.tasks._seq2seq import LAYOUTS
from mixerlab.lightning_modules.tasks.addition import DIGIT_ID, PLUS_ID

SEQ2SEQ = ("reversal", "sorting", "copying", "addition")


def build(tmp_path, name: str, **kwargs):
    kwargs = {"num_train": 300, "num_val": 60, "batch_size": 16, **kwargs}
    dm = build_task(name, seed=0, cache_dir=str(tmp_path), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    dm.check_ready()
    return dm


def examples(dm):
    """(source, target) pairs of the training split, as arrays."""
    ds = dm.train_dataset
    return [(np.array(x), np.array(y)) for x, y in zip(ds["input"], ds["target"], strict=True)]


def as_number(ids: np.ndarray) -> int:
    return int("".join(str(int(d) - DIGIT_ID) for d in ids))


@pytest.mark.parametrize(
    ("name", "rule"),
    [("reversal", lambda s: s[::-1]), ("sorting", np.sort), ("copying", lambda s: s)],
)
def test_a_symbol_task_target_is_its_rule_of_the_source_then_the_end(tmp_path, name, rule):
    dm = build(tmp_path, name, min_length=2, max_length=9)
    lengths = set()
    for source, target in examples(dm):
        lengths.add(len(source))
        assert ((source >= 3) & (source < dm.vocab_size)).all()
        assert target[-1] == EOS_ID and (target[:-1] == rule(source)).all()
    assert lengths == set(range(2, 10))  # every length is drawn
    assert dm.max_source_len == 9 and dm.max_len == 10  # the decoder reads start + 9 tokens


def test_addition_writes_the_sum_of_the_two_operands_with_carries(tmp_path):
    dm = build(tmp_path, "addition", min_length=1, max_length=4)
    carried = 0
    for source, target in examples(dm):
        (plus,) = np.flatnonzero(source == PLUS_ID)
        a, b = as_number(source[:plus]), as_number(source[plus + 1 :])
        assert 1 <= plus <= 4 and 1 <= len(source) - plus - 1 <= 4
        assert target[-1] == EOS_ID and as_number(target[:-1]) == a + b
        carried += len(str(a + b)) > max(len(str(a)), len(str(b)))
    assert carried > 0  # sums longer than both operands occur
    assert dm.max_source_len == 9 and dm.max_len == 6


def test_a_batch_feeds_the_decoder_the_target_shifted_right_after_the_start(tmp_path):
    dm = build(tmp_path, "reversal")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"source", "source_mask", "input", "target", "mask"}
    assert batch["source"].shape == batch["source_mask"].shape
    assert batch["input"].shape == batch["target"].shape == batch["mask"].shape
    for i in range(batch["input"].shape[0]):
        n = int(batch["mask"][i].sum())
        target = batch["target"][i]
        assert batch["input"][i, 0] == BOS_ID
        assert torch.equal(batch["input"][i, 1:n], target[: n - 1])
        assert target[n - 1] == EOS_ID and (target[n:] == IGNORE_INDEX).all()
        assert (batch["input"][i, n:] == PAD_ID).all()
        s = int(batch["source_mask"][i].sum())
        assert torch.equal(batch["source"][i, :s].flip(0), target[: n - 1])  # reversed
        assert (batch["source"][i, s:] == PAD_ID).all()


def test_fresh_examples_every_epoch_come_in_seq2seq_batches(tmp_path):
    dm = build(tmp_path, "sorting", fresh_every_epoch=True)
    loader = dm.train_dataloader()
    first = next(iter(loader))
    loader.sampler.set_epoch(1)
    later = next(iter(loader))
    assert set(later) == set(first) and not torch.equal(first["source"], later["source"])
    n = later["mask"].sum(1)
    assert (later["target"][torch.arange(len(n)), n - 1] == EOS_ID).all()


@pytest.mark.parametrize("name", SEQ2SEQ)
def test_chance_is_the_target_tokens_training_frequencies(tmp_path, name):
    dm = build(tmp_path, name)
    (chance,) = dm.baselines().values()
    targets = dm._train.targets.numpy()
    counts = np.bincount(targets[targets != IGNORE_INDEX], minlength=dm.vocab_size)
    assert counts[PAD_ID] == counts[BOS_ID] == 0  # never targets
    val = dm._vals[0].targets.numpy()
    val = val[val != IGNORE_INDEX]
    assert chance.acc == pytest.approx(np.mean(val == counts.argmax()))
    assert np.log(2) < chance.loss < np.log(dm.vocab_size)


@pytest.mark.parametrize("name", SEQ2SEQ)
def test_the_same_seed_draws_the_same_examples_and_another_seed_others(tmp_path, name):
    first = examples(build(tmp_path / "a", name))
    again = examples(build(tmp_path / "b", name))
    other = build_task(name, seed=1, cache_dir=str(tmp_path / "c"), num_train=300, num_val=60)
    other.prepare_data()
    assert all(np.array_equal(x, y) for (x, _), (y, _) in zip(first, again, strict=True))
    assert not all(
        np.array_equal(x, np.array(y))
        for (x, _), y in zip(first, other.train_dataset["input"], strict=True)
    )


def test_bad_lengths_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="min_length=5 exceeds max_length=3"):
        build_task("reversal", seed=0, cache_dir=None, min_length=5, max_length=3)
    with pytest.raises(ValueError, match="max_length <= 18"):
        build_task("addition", seed=0, cache_dir=None, max_length=19)
    with pytest.raises(ValueError, match="min_length"):
        build_task("copying", seed=0, cache_dir=None, min_length=0)


@pytest.mark.parametrize("name", SEQ2SEQ)
def test_the_prefix_layout_is_one_causal_sequence_scored_on_the_target(tmp_path, name):
    pairs = examples(build(tmp_path / "apart", name))
    dm = build(tmp_path / "prefix", name, layout="prefix")
    assert (dm.task_type, dm.causal, dm.max_source_len, dm.start_id) == ("lm", True, None, None)
    for (source, target), x, y in zip(
        pairs, dm.train_dataset["input"], dm.train_dataset["target"], strict=True
    ):
        n = len(source)
        assert x == [*source, BOS_ID, *target[:-1]] and len(x) <= dm.max_len
        assert y == [IGNORE_INDEX] * n + list(target)  # position n reads the start token
    batch = next(iter(dm.val_dataloader()))  # marked for a prefix LM: source and start token
    rows = dm.val_datasets[dm.val_set_names[0]]["input"][: len(batch["input"])]
    assert batch["prefix"].tolist() == [row.index(BOS_ID) + 1 for row in rows]


@pytest.mark.parametrize("name", SEQ2SEQ)
def test_the_tagging_layout_writes_the_target_at_the_sources_positions(tmp_path, name):
    pairs = examples(build(tmp_path / "apart", name))
    dm = build(tmp_path / "tagging", name, layout="tagging")
    assert (dm.task_type, dm.causal) == ("lm", False)
    for (source, target), x, y in zip(
        pairs, dm.train_dataset["input"], dm.train_dataset["target"], strict=True
    ):
        assert x == [*source, BOS_ID] and len(x) <= dm.max_len
        assert y == [*target, *[IGNORE_INDEX] * (len(source) + 1 - len(target))]


def test_a_layout_is_declared_before_the_task_is_built() -> None:
    reversal = get_task_class("reversal")
    assert reversal.declared({"layout": "seq2seq"}) == ("seq2seq", True)
    assert reversal.declared({"layout": "prefix"}) == ("lm", True)
    assert reversal.declared({"layout": "tagging"}) == ("lm", False)
    assert [reversal.prefix_batches({"layout": x}) for x in LAYOUTS] == [False, True, False]
    assert not get_task_class("mqar").prefix_batches({})
    with pytest.raises(ValueError, match="layout='bidirectional' is not a layout; choose one of"):
        build_task("reversal", seed=0, cache_dir=None, layout="bidirectional")
