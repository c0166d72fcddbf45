"""MQAR: the value of every queried key, query gaps, mixed training settings, bad settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from test_synthetic import all_batches, build

from mixerlab.lightning_modules.tasks import IGNORE_INDEX, PAD_ID
from mixerlab.lightning_modules.tasks.mqar import MQARDataModule


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


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"seq_len": 12, "num_kv_pairs": 4, "train_configs": None},
            "seq_len >= 4 \\* num_kv_pairs",
        ),
        (
            {"vocab_size": 10, "seq_len": 64, "num_kv_pairs": 8, "train_configs": None},
            "vocab_size >= 18",
        ),
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
