"""Synthetic tasks: determinism, train/val separation, scored positions, padding, caching."""

from __future__ import annotations

import hashlib
from importlib.resources import files

import pytest
import torch
import yaml

from mixerlab.lightning_modules.tasks import SyntheticTaskDataModule, build_task
from mixerlab.lightning_modules.tasks._loading import pad_collate
from mixerlab.lightning_modules.tasks.induction_heads import InductionHeadsDataModule
from mixerlab.lightning_modules.tasks.listops import ListOpsDataModule
from mixerlab.lightning_modules.tasks.mad_compression import MADCompressionDataModule
from mixerlab.lightning_modules.tasks.mad_fuzzy_recall import MADFuzzyRecallDataModule
from mixerlab.lightning_modules.tasks.mad_memorization import MADMemorizationDataModule
from mixerlab.lightning_modules.tasks.mad_noisy_recall import MADNoisyRecallDataModule
from mixerlab.lightning_modules.tasks.mad_recall import MADRecallDataModule
from mixerlab.lightning_modules.tasks.mad_selective_copy import MADSelectiveCopyDataModule
from mixerlab.lightning_modules.tasks.mqar import MQARDataModule
from mixerlab.lightning_modules.tasks.selective_copy import SelectiveCopyDataModule

SMALL = {
    "mqar": (
        MQARDataModule,
        {
            "vocab_size": 64,
            "seq_len": 32,
            "num_kv_pairs": 4,
            "train_configs": None,
            "test_configs": None,
        },
    ),
    "selective_copy": (SelectiveCopyDataModule, {"seq_len": 24, "num_data_tokens": 4}),
    "induction_heads": (InductionHeadsDataModule, {"seq_len": 24, "test_seq_lens": [24, 48]}),
    "listops": (ListOpsDataModule, {"max_depth": 3, "max_args": 4, "max_length": 48}),
    "mad_recall": (MADRecallDataModule, {"seq_len": 32}),
    "mad_noisy_recall": (MADNoisyRecallDataModule, {"seq_len": 32}),
    "mad_fuzzy_recall": (MADFuzzyRecallDataModule, {"seq_len": 32}),
    "mad_selective_copy": (MADSelectiveCopyDataModule, {"seq_len": 32, "num_tokens_to_copy": 4}),
    "mad_memorization": (MADMemorizationDataModule, {"vocab_size": 32}),
    "mad_compression": (MADCompressionDataModule, {"seq_len": 16}),
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
    kinds = {"listops": "classification", "mad_compression": "reconstruction"}
    assert dm.task_type == kinds.get(name, "lm")
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
    "mad_recall": (1, "fdb00f1095409cae"),
    "mad_noisy_recall": (1, "c5a117654d5311aa"),
    "mad_fuzzy_recall": (1, "01df673bb6f41367"),
    "mad_selective_copy": (1, "53abdc3f9f3953a4"),
    "mad_memorization": (1, "e0fac6bd3c317fad"),
    "mad_compression": (1, "04ec02118a565ddf"),
}


@pytest.mark.parametrize("name", SMALL)
def test_generator_output_is_pinned_to_its_version(tmp_path, name):
    dm = build(tmp_path, name)
    head = dm.train_dataset.select(range(50))
    digest = hashlib.sha256(repr((head["input"], head["target"])).encode()).hexdigest()[:16]
    assert (dm.generator_version, digest) == GOLDEN[name], (
        "the generator's output changed: bump its generator_version and update GOLDEN"
    )


@pytest.mark.parametrize("name", SMALL)
def test_shipped_task_config_builds_its_datamodule(tmp_path, name):
    spec = yaml.safe_load((files("mixerlab.conf") / "task" / f"{name}.yaml").read_text())
    dm = build_task(spec["name"], seed=0, cache_dir=str(tmp_path), **spec["datamodule"])
    assert isinstance(dm, SMALL[name][0]) and dm.name == name
    assert dm.causal is (dm.task_type != "classification")  # ListOps is the encoder task


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
