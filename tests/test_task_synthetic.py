"""Synthetic tasks: determinism, train/val separation, scored positions, padding, caching."""

from __future__ import annotations

import hashlib
from importlib.resources import files

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from mixerlab.lightning_modules.tasks import build_task
from mixerlab.lightning_modules.tasks.induction_heads import InductionHeadsDataModule
from mixerlab.lightning_modules.tasks.listops import (
    LISTOPS_TOKENS,
    ListOpsDataModule,
    listops_decode,
)
from mixerlab.lightning_modules.tasks.loading import IGNORE_INDEX, PAD_ID, pad_collate
from mixerlab.lightning_modules.tasks.mqar import MQARDataModule
from mixerlab.lightning_modules.tasks.selective_copy import SelectiveCopyDataModule
from mixerlab.lightning_modules.tasks.synthetic import SyntheticTaskDataModule

SMALL = {
    "mqar": (MQARDataModule, {"vocab_size": 64, "seq_len": 32, "num_kv_pairs": 4}),
    "selective_copy": (SelectiveCopyDataModule, {"seq_len": 24, "num_data_tokens": 4}),
    "induction_heads": (InductionHeadsDataModule, {"seq_len": 24, "test_seq_lens": [24, 48]}),
    "listops": (ListOpsDataModule, {"max_depth": 3, "max_args": 4, "max_length": 48}),
}
SIZES = {"num_train": 300, "num_val": 100}


def build(tmp_path, name: str, seed: int = 0, **overrides) -> SyntheticTaskDataModule:
    cls, kwargs = SMALL[name]
    kwargs = {**kwargs, **SIZES, **overrides}
    dm = cls(batch_size=16, seed=seed, cache_dir=str(tmp_path), **kwargs)
    dm.setup("fit")
    return dm


def rows(ds) -> list[tuple[int, ...]]:
    return [tuple(x) for x in ds["input"]]


def all_batches(loader) -> list[dict[str, torch.Tensor]]:
    return list(loader)


@pytest.mark.parametrize("name", SMALL)
def test_same_seed_same_data_other_seed_other_data(tmp_path, name):
    a = build(tmp_path / "a", name, seed=0)
    b = build(tmp_path / "b", name, seed=0)
    c = build(tmp_path / "c", name, seed=1)
    assert rows(a.train_dataset) == rows(b.train_dataset)
    assert a.train_dataset["target"] == b.train_dataset["target"]
    for set_name in a.val_set_names:
        assert rows(a.val_datasets[set_name]) == rows(b.val_datasets[set_name])
    assert rows(a.train_dataset) != rows(c.train_dataset)
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint["train"] != c.fingerprint["train"]


@pytest.mark.parametrize("name", SMALL)
def test_no_validation_input_occurs_in_training(tmp_path, name):
    dm = build(tmp_path, name)
    train = set(rows(dm.train_dataset))
    for set_name in dm.val_set_names:
        assert not train & set(rows(dm.val_datasets[set_name]))


def test_validation_examples_seen_in_training_are_dropped(tmp_path):
    # 4 trigger positions x 2 tokens ** 5 free positions: 300 training draws cover most inputs.
    dm = build(tmp_path, "induction_heads", vocab_size=4, seq_len=7, test_seq_lens=None)
    train = set(rows(dm.train_dataset))
    val = rows(dm.val_datasets["val"])
    assert 0 < len(val) < SIZES["num_val"]
    assert not train & set(val)


def test_a_validation_set_fully_covered_by_training_is_an_error(tmp_path):
    # One ordinary token and length 4: only 2 distinct inputs exist, all seen in training.
    with pytest.raises(ValueError, match="empty"):
        build(tmp_path, "induction_heads", vocab_size=3, seq_len=4, test_seq_lens=None)


def test_train_and_validation_use_different_seed_streams(tmp_path):
    dm = build(tmp_path, "mqar")  # validation defaults to the training configuration
    assert dm.val_set_names == ["val"]
    assert rows(dm.train_dataset)[:10] != rows(dm.val_datasets["val"])[:10]


@pytest.mark.parametrize("random_non_queries", [True, False])
def test_mqar_targets_are_the_values_of_queried_keys(tmp_path, random_non_queries):
    dm = build(tmp_path, "mqar", random_non_queries=random_non_queries)
    k, vocab = 4, dm.vocab_size
    first_value = 2 + dm.num_keys
    for x, y in zip(dm.train_dataset["input"], dm.train_dataset["target"], strict=True):
        x, y = np.array(x), np.array(y)
        keys, values = x[0 : 2 * k : 2], x[1 : 2 * k : 2]
        assert len(set(keys)) == k and len(set(values)) == k
        assert (keys >= 2).all() and (keys < first_value).all()
        assert (values >= first_value).all() and (values < vocab).all()
        scored = np.flatnonzero(y != IGNORE_INDEX)
        assert len(scored) == k
        assert (scored >= 2 * k).all() and ((scored - 2 * k) % 2 == 0).all()
        assert sorted(x[scored]) == sorted(keys)  # every key queried exactly once
        pair = dict(zip(keys, values, strict=True))
        assert [pair[key] for key in x[scored]] == list(y[scored])
        rest = np.setdiff1d(np.arange(2 * k, len(x)), scored)
        if random_non_queries:
            assert (x[rest] >= 2).all() and (x[rest] < vocab).all()
        else:
            assert (x[rest] == MQARDataModule.FILLER_ID).all()


def test_mqar_power_a_pulls_queries_towards_the_context(tmp_path):
    def mean_gap(power_a: float) -> float:
        dm = build(tmp_path / str(power_a), "mqar", seq_len=64, power_a=power_a)
        y = np.array(dm.train_dataset["target"])
        return float(np.argwhere(y != IGNORE_INDEX)[:, 1].mean())

    assert mean_gap(0.01) < mean_gap(1.0) - 5


def test_mqar_mixed_training_configs_and_named_test_sets(tmp_path):
    configs = OmegaConf.create(  # as Hydra passes them
        {
            "train": [
                {"seq_len": 16, "num_kv_pairs": 2, "n_examples": 64},
                {"seq_len": 32, "num_kv_pairs": 8, "n_examples": 64},
            ],
            "test": [
                {"seq_len": 32, "num_kv_pairs": 8, "n_examples": 32},
                {"seq_len": 64, "num_kv_pairs": 16, "n_examples": 32},
            ],
        }
    )
    dm = MQARDataModule(
        vocab_size=64,
        train_configs=configs.train,
        test_configs=configs.test,
        batch_size=128,
        cache_dir=str(tmp_path),
    )
    dm.setup("fit")
    assert dm.val_set_names == ["seq_len=32,kv=8", "seq_len=64,kv=16"]
    assert dm.max_len == 64
    assert sorted(len(x) for x in dm.train_dataset["input"])[::64] == [16, 32]

    (batch,) = all_batches(dm.train_dataloader())
    lengths = batch["mask"].sum(1)
    assert sorted(lengths.unique().tolist()) == [16, 32]
    assert (batch["mask"] == (torch.arange(32) < lengths[:, None])).all()
    assert (batch["input"][~batch["mask"]] == PAD_ID).all()
    assert (batch["target"][~batch["mask"]] == IGNORE_INDEX).all()
    assert (batch["input"][batch["mask"]] != PAD_ID).all()
    scored = (batch["target"] != IGNORE_INDEX).sum(1)
    assert (scored == torch.where(lengths == 16, 2, 8)).all()

    loaders = dm.val_dataloader()
    assert isinstance(loaders, list) and len(loaders) == 2
    for loader, length in zip(loaders, (32, 64), strict=True):
        batch = next(iter(loader))
        assert batch["input"].shape[1] == length and batch["mask"].all()


def test_selective_copy_targets_are_the_data_tokens_in_order(tmp_path):
    dm = build(tmp_path, "selective_copy")
    seq_len, m = 24, 4
    for x, y in zip(dm.train_dataset["input"], dm.train_dataset["target"], strict=True):
        x, y = np.array(x), np.array(y)
        assert len(x) == seq_len + m
        region = x[:seq_len]
        data = region[region != SelectiveCopyDataModule.NOISE_ID]
        assert len(data) == m and (data >= SelectiveCopyDataModule.FIRST_TOKEN_ID).all()
        assert (x[seq_len:] == SelectiveCopyDataModule.MARKER_ID).all()
        assert (y[seq_len:] == data).all()
        assert (y[:seq_len] == IGNORE_INDEX).all()


def test_selective_copy_spacing_varies(tmp_path):
    dm = build(tmp_path, "selective_copy")
    x = np.array(dm.train_dataset["input"])[:, :24]
    first_data = (x != SelectiveCopyDataModule.NOISE_ID).argmax(1)
    assert len(set(first_data.tolist())) > 5


def test_induction_last_target_is_the_token_after_the_first_trigger(tmp_path):
    dm = build(tmp_path, "induction_heads")
    trigger = InductionHeadsDataModule.TRIGGER_ID
    for name, length in (("seq_len=24", 24), ("seq_len=48", 48)):
        ds = dm.val_datasets[name]
        for x, y in zip(ds["input"], ds["target"], strict=True):
            x, y = np.array(x), np.array(y)
            assert len(x) == length
            (positions,) = np.nonzero(x == trigger)
            assert len(positions) == 2 and positions[1] == length - 1
            assert positions[0] + 1 < length - 1
            assert list(np.flatnonzero(y != IGNORE_INDEX)) == [length - 1]
            assert y[-1] == x[positions[0] + 1]


def test_induction_trigger_position_varies(tmp_path):
    dm = build(tmp_path, "induction_heads")
    x = np.array(dm.train_dataset["input"])
    first = (x == InductionHeadsDataModule.TRIGGER_ID).argmax(1)
    assert first.min() == 0 and first.max() == 21


def evaluate_listops(text: str) -> int:
    """An independent evaluator of the LRA text form, with a stack instead of recursion."""
    ops = {
        "[MAX": max,
        "[MIN": min,
        "[MED": lambda a: int(np.median(a)),
        "[SM": lambda a: sum(a) % 10,
    }
    stack: list[tuple[str, list[int]]] = [("", [])]
    for token in text.split():
        if token in ops:
            stack.append((token, []))
        elif token == "]":
            op, args = stack.pop()
            stack[-1][1].append(ops[op](args))
        else:
            stack[-1][1].append(int(token))
    ((_, (value,)),) = stack
    return value


def nesting_depth(text: str) -> int:
    depth = deepest = 0
    for token in text.split():
        depth += token.startswith("[") - (token == "]")
        deepest = max(deepest, depth)
    return deepest


def test_listops_label_is_the_value_of_the_expression(tmp_path):
    dm = build(tmp_path, "listops")
    labels = dm.train_dataset["target"]
    for x, label in zip(dm.train_dataset["input"], labels, strict=True):
        text = listops_decode(x)
        assert text.startswith("[") and text.endswith("]")
        assert evaluate_listops(text) == label
        assert 16 <= len(x) <= 48
        assert 1 <= nesting_depth(text) <= 3
    assert len(set(labels)) == 10


def test_listops_batches_are_right_padded_with_labels(tmp_path):
    dm = build(tmp_path, "listops")
    batch = next(iter(dm.val_dataloader()))
    assert batch["target"].shape == (16,)
    lengths = batch["mask"].sum(1)
    assert len(lengths.unique()) > 1
    assert batch["input"].shape[1] == lengths.max()
    assert (batch["mask"] == (torch.arange(batch["input"].shape[1]) < lengths[:, None])).all()
    assert (batch["input"][~batch["mask"]] == PAD_ID).all()
    assert (batch["input"][batch["mask"]] != PAD_ID).all()
    assert (batch["input"] < len(LISTOPS_TOKENS)).all()


def test_pad_collate_pads_inputs_and_targets():
    batch = pad_collate(
        [
            (torch.tensor([5, 6, 7]), torch.tensor([-100, 9, -100])),
            (torch.tensor([8]), torch.tensor([3])),
        ]
    )
    assert batch["input"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["target"].tolist() == [[-100, 9, -100], [3, -100, -100]]
    assert batch["mask"].tolist() == [[True, True, True], [True, False, False]]


@pytest.mark.parametrize("name", SMALL)
def test_datamodule_attributes(tmp_path, name):
    dm = build(tmp_path, name)
    classification = name == "listops"
    assert dm.task_type == ("classification" if classification else "lm")
    assert dm.num_classes == (10 if classification else None)
    assert dm.bytes_per_token is None
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in dm.fingerprint.items())
    assert dm.fingerprint["task"] == dm.name == name
    dm.check_ready()
    loaders = dm.val_dataloader()
    loaders = loaders if isinstance(loaders, list) else [loaders]
    assert len(loaders) == len(dm.val_set_names) == len(dm.val_datasets)
    longest = 0
    for loader in [dm.train_dataloader(), *loaders]:
        for batch in loader:
            assert set(batch) == {"input", "target", "mask"}
            assert batch["input"].dtype == torch.long and batch["mask"].dtype == torch.bool
            assert batch["input"].max() < dm.vocab_size and batch["input"].min() >= 0
            if not classification:
                assert batch["target"].shape == batch["input"].shape
                assert (batch["target"] < dm.vocab_size).all()
            longest = max(longest, batch["input"].shape[1])
    assert longest <= dm.max_len


def test_second_setup_reads_the_cache(tmp_path, monkeypatch):
    calls = []
    generate = MQARDataModule.generate

    def counting(self, *args, **kwargs):
        calls.append(kwargs)
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(MQARDataModule, "generate", counting)
    first = build(tmp_path, "mqar")
    assert calls
    calls.clear()
    again = build(tmp_path, "mqar")
    assert not calls
    assert rows(again.train_dataset) == rows(first.train_dataset)
    build(tmp_path, "mqar", power_a=0.5)  # other parameters: other data, other cache entry
    assert calls


def test_training_order_is_seeded(tmp_path):
    def first_batch(seed: int) -> torch.Tensor:
        return next(iter(build(tmp_path, "selective_copy", seed=seed).train_dataloader()))["input"]

    assert torch.equal(first_batch(0), first_batch(0))
    assert not torch.equal(first_batch(0), first_batch(1))


# (generator_version, sha256 of the first 50 training examples with seed 0): a change in any
# generator's output must come with a bump of its generator_version, or cached data goes stale.
GOLDEN = {
    "mqar": (1, "692ee5fbe2db5796"),
    "selective_copy": (1, "81cac741df1cb8e1"),
    "induction_heads": (1, "2d218feb3a8d34e8"),
    "listops": (1, "eab6a93c9af657fd"),
}


@pytest.mark.parametrize("name", SMALL)
def test_generator_output_is_pinned_to_its_version(tmp_path, name):
    dm = build(tmp_path, name)
    head = dm.train_dataset.select(range(50))
    digest = hashlib.sha256(repr((head["input"], head["target"])).encode()).hexdigest()[:16]
    assert (dm.generator_version, digest) == GOLDEN[name], (
        "the generator's output changed: bump its generator_version and update GOLDEN"
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seq_len": 12, "num_kv_pairs": 4}, "seq_len >= 4 \\* num_kv_pairs"),
        ({"vocab_size": 10, "seq_len": 64, "num_kv_pairs": 8}, "vocab_size >= 18"),
        (
            {"seq_len": 64, "train_configs": [{"seq_len": 64, "num_kv_pairs": 4, "n_examples": 8}]},
            "either",
        ),
        ({"train_configs": [{"seq_len": 64, "kv": 4, "n_examples": 8}]}, "exactly the keys"),
        ({"power_a": 0.0}, "power_a"),
    ],
)
def test_mqar_rejects_bad_settings(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        MQARDataModule(batch_size=8, cache_dir=str(tmp_path), **kwargs)


def test_other_tasks_reject_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="do not fit"):
        SelectiveCopyDataModule(batch_size=8, seq_len=4, num_data_tokens=5)
    with pytest.raises(ValueError, match="length >= 3"):
        InductionHeadsDataModule(batch_size=8, seq_len=2)
    with pytest.raises(ValueError, match="min_length"):
        ListOpsDataModule(batch_size=8, min_length=64, max_length=32)
    with pytest.raises(ValueError, match="batch_size"):
        ListOpsDataModule(batch_size=0)
    with pytest.raises(ValueError, match="duplicates"):
        InductionHeadsDataModule(batch_size=8, test_seq_lens=[32, 32])


@pytest.mark.parametrize("name", SMALL)
def test_shipped_task_config_builds_its_datamodule(tmp_path, name):
    spec = yaml.safe_load((files("mixerlab.conf") / "task" / f"{name}.yaml").read_text())
    dm = build_task(spec["name"], seed=0, cache_dir=str(tmp_path), **spec["datamodule"])
    assert isinstance(dm, SMALL[name][0]) and dm.name == name
    assert dm.causal is (dm.task_type == "lm")  # ListOps is the encoder task


def test_shipped_recall_tasks_validate_beyond_the_training_length():
    def spec(name):
        return yaml.safe_load((files("mixerlab.conf") / "task" / f"{name}.yaml").read_text())[
            "datamodule"
        ]

    mqar = spec("mqar")
    longest_train = max(c["seq_len"] for c in mqar["train_configs"])
    assert max(c["seq_len"] for c in mqar["test_configs"]) > longest_train
    assert any(c["seq_len"] == longest_train for c in mqar["test_configs"])  # and at it
    induction = spec("induction_heads")
    assert induction["seq_len"] in induction["test_seq_lens"]
    assert max(induction["test_seq_lens"]) > induction["seq_len"]
