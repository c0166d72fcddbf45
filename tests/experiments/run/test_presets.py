"""Paper-exact presets: each runs, LRA's ListOps generator is what LRA draws, and fresh training
examples every epoch are a function of (seed, epoch) alone."""

from __future__ import annotations

import json
import random
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from configs import compose_config, run_config
from torch.utils.data import DistributedSampler

from mixerlab.experiments.run.schema import ConfigError
from mixerlab.experiments.run.train import train
from mixerlab.lightning_modules.tasks import build_task
from mixerlab.lightning_modules.tasks._examples import FreshEpochs
from mixerlab.lightning_modules.tasks._resumable import EpochShuffle
from mixerlab.lightning_modules.tasks.listops import ListOpsDataModule, listops_decode
from mixerlab.lightning_modules.tasks.mqar import MQARDataModule
from mixerlab.lightning_modules.tasks.selective_copy import SelectiveCopyDataModule

RUN = ["debug=default", "logger=none", "callbacks.progress_bar=false"]
# Each preset at its own sizes on a sliver of data: one validation batch per set, and for the
# presets that draw fresh examples, at least two epochs in the debug preset's four steps.
PRESETS = {
    "zoology_mqar": ["task.datamodule.num_train=256", "task.datamodule.num_val=64"],
    "lra_listops": ["task.datamodule.num_train=64", "task.datamodule.num_val=32"],
    "mamba_selective_copy": ["task.datamodule.num_train=64", "task.datamodule.num_val=64"],
    "mamba_induction": ["task.datamodule.num_train=16", "task.datamodule.num_val=8"],
}


class InputsPerEpoch(pl.Callback):
    """The training inputs each epoch saw, as sets of rows."""

    def __init__(self) -> None:
        self.rows: dict[int, set[tuple[int, ...]]] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: dict, *_: Any) -> None:
        rows = self.rows.setdefault(trainer.current_epoch, set())
        rows.update(tuple(row.tolist()) for row in batch["input"])


# The default mixer in each, and Mamba's paper mixers at their per-mixer settings (width, heads,
# positions, channel mixer, init and learning rate from conf/per_mixer/).
CASES = [(preset, "attention") for preset in PRESETS] + [
    ("mamba_induction", "mamba"),
    ("mamba_selective_copy", "mamba"),
]


@pytest.mark.parametrize(("preset", "mixer"), CASES, ids=[f"{p}-{m}" for p, m in CASES])
def test_each_preset_runs(
    preset: str, mixer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIXERLAB_CACHE", str(tmp_path / "cache"))
    cfg = compose_config(f"experiment={preset}", f"mixer={mixer}", *RUN, *PRESETS[preset])
    seen = InputsPerEpoch()
    train(cfg, tmp_path / "run", callbacks=[seen])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "finished", results["error"]
    monitor = cfg.callbacks.checkpoint.monitor
    assert monitor.startswith("val/acc") and monitor in results["best"]
    if cfg.task.datamodule.get("fresh_every_epoch"):  # Mamba's presets: new examples per epoch
        assert len(seen.rows) >= 2 and seen.rows[0] != seen.rows[1]


def test_mqar_without_random_non_queries_fills_with_one_token(tmp_path: Path) -> None:
    dm = MQARDataModule(
        vocab_size=8192, seq_len=64, num_kv_pairs=4, train_configs=None, random_non_queries=False
    )
    inputs, targets = dm.generate(np.random.default_rng(0), 50, seq_len=64, num_kv_pairs=4)
    between = inputs[:, 8:][targets[:, 8:] == -100]  # after the pairs, off the queries
    assert set(between.tolist()) == {MQARDataModule.FILLER_ID}


def test_an_option_the_task_does_not_take_is_named_with_the_accepted_ones() -> None:
    with pytest.raises(ConfigError, match=r"seq_len is not a known key.*'listops' accepts: "):
        run_config("experiment=mamba_induction", "task=listops")


# ----------------------------------------------------------------------- LRA's ListOps generator
OPS = {"[MIN": min, "[MAX": max, "[MED": lambda a: int(np.median(a)), "[SM": lambda a: sum(a) % 10}


def parse(text: str) -> tuple[int, int, list[int]]:
    """An expression's value, its operator nesting depth and every operator's argument count,
    evaluated from the text with a stack (independently of the generator)."""
    stack: list[tuple[str, list[int]]] = []
    depth, arities, value = 0, [], None
    for token in text.split():
        if token in OPS:
            stack.append((token, []))
            depth = max(depth, len(stack))
        elif token == "]":
            op, args = stack.pop()
            arities.append(len(args))
            value = OPS[op](args)
            if stack:
                stack[-1][1].append(value)
        else:
            stack[-1][1].append(int(token))
    assert not stack and value is not None
    return value, depth, arities


def lra_tree(rnd: random.Random, depth: int, max_depth: int, max_args: int) -> list[str]:
    """LRA's generate_tree, as its data/listops.py draws it (VALUE_P = 0.25: below max_depth a
    node is an operator when a uniform draw is <= 0.25), as the tokens its pipeline keeps."""
    if depth >= max_depth or rnd.random() > 0.25:
        return [str(rnd.choice(range(10)))]
    children = [
        lra_tree(rnd, depth + 1, max_depth, max_args) for _ in range(rnd.randint(2, max_args))
    ]
    return [rnd.choice(list(OPS)), *(t for child in children for t in child), "]"]


def test_the_lra_preset_draws_lra_shaped_expressions() -> None:
    options = run_config("experiment=lra_listops")["task"]["datamodule"]
    kwargs = {
        k: options[k] for k in ("max_depth", "max_args", "leaf_prob", "min_length", "max_length")
    }
    dm = ListOpsDataModule(**kwargs)
    inputs, labels = dm.generate(np.random.default_rng(0), 60)
    lengths = [len(x) for x in inputs]
    assert min(lengths) > 500 / 4 and max(lengths) < 2000 / 4
    for tokens, label in zip(inputs, labels, strict=True):
        value, depth, arities = parse(listops_decode(tokens))
        assert value == label
        assert depth <= 9  # LRA's max_depth=10 counts the leaf level
        assert min(arities) >= 2 and max(arities) <= 10


def test_listops_options_draw_lras_distribution() -> None:
    """At a small LRA setting (max_depth 5, max_args 5, 4 < length < 80), task=listops with
    leaf_prob 0.75 and max_depth 4 keeps expressions distributed as LRA's rejection sampler's."""
    rnd, ours, theirs = random.Random(0), [], []
    while len(theirs) < 3000:
        tokens = lra_tree(rnd, 1, 5, 5)
        if 4 < len(tokens) < 80:
            theirs.append(" ".join(tokens))
    dm = ListOpsDataModule(max_depth=4, max_args=5, leaf_prob=0.75, min_length=5, max_length=79)
    inputs, _ = dm.generate(np.random.default_rng(0), 3000)
    ours = [listops_decode(x) for x in inputs]

    def summary(texts: list[str]) -> tuple[float, Counter, Counter]:
        parsed = [parse(text) for text in texts]
        mean_len = statistics.mean(len(text.split()) for text in texts)
        return mean_len, Counter(p[0] for p in parsed), Counter(p[1] for p in parsed)

    (len_a, labels_a, depth_a), (len_b, labels_b, depth_b) = summary(ours), summary(theirs)

    def tv(a: Counter, b: Counter) -> float:
        return 0.5 * sum(abs(a[k] - b[k]) for k in a.keys() | b.keys()) / 3000

    assert abs(len_a - len_b) < 2.0  # means ~18 (sd ~13): the gap's standard error ~0.35
    assert tv(labels_a, labels_b) < 0.05 and tv(depth_a, depth_b) < 0.05


def test_default_task_fingerprints_are_unchanged(tmp_path: Path) -> None:
    """The new options leave the defaults' data as they were (pinned before they existed)."""
    pinned = {
        "mqar": "62a033f062dc052e",
        "selective_copy": "f528c9fe83290e44",
        "induction_heads": "ee4e97437becb052",
        "listops": "06edb37a88de0c41",
    }
    # what the constructors' defaults were when the pins were taken (they are the conf's now)
    arguments = {
        "mqar": {"train_configs": None, "test_configs": None},
        "selective_copy": {"num_train": 10_000},
        "induction_heads": {"num_train": 10_000, "num_val": 1_000, "test_seq_lens": None},
        "listops": {},
    }
    for name, train_fp in pinned.items():
        fingerprint = build_task(
            name, seed=0, cache_dir=str(tmp_path), **arguments[name]
        ).fingerprint
        assert fingerprint["train"] == train_fp and "fresh_every_epoch" not in fingerprint
    fresh = build_task("listops", seed=0, cache_dir=str(tmp_path), fresh_every_epoch=True)
    assert fresh.fingerprint["fresh_every_epoch"] == "true"


# ---------------------------------------------------------------------- fresh examples per epoch
def fresh_copy_task(tmp_path: Path, seed: int = 0, workers: int = 0) -> SelectiveCopyDataModule:
    dm = SelectiveCopyDataModule(
        seq_len=16, num_data_tokens=4, num_train=40, num_val=20, batch_size=8, seed=seed,
        cache_dir=str(tmp_path), num_workers=workers, fresh_every_epoch=True,
    )  # fmt: skip
    dm.setup("fit")
    return dm


def epoch_rows(dm: SelectiveCopyDataModule, epoch: int) -> list[tuple[int, ...]]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)  # what Lightning does at every epoch's start
    return sorted(tuple(x.tolist()) for batch in loader for x in batch["input"])


def test_fresh_examples_depend_on_seed_and_epoch_only(tmp_path: Path) -> None:
    a = fresh_copy_task(tmp_path / "a")
    epochs = [epoch_rows(a, epoch) for epoch in (0, 1, 2)]
    assert len({tuple(rows) for rows in epochs}) == 3 and all(len(r) == 40 for r in epochs)
    fixed = sorted(tuple(x.tolist()) for x in a.train_dataset.with_format("torch")["input"])
    assert epochs[0] == fixed  # epoch 0 is the cached split
    # a resumed run starts at its epoch: the same examples, with no epochs before it drawn
    b = fresh_copy_task(tmp_path / "b")
    assert epoch_rows(b, 2) == epochs[2]
    # worker processes get the epoch in each key
    c = fresh_copy_task(tmp_path / "c", workers=2)
    assert epoch_rows(c, 1) == epochs[1]
    assert epoch_rows(fresh_copy_task(tmp_path / "d", seed=1), 1) != epochs[1]


def test_fresh_epochs_hold_one_epoch() -> None:
    drawn: list[int] = []

    def draw(epoch: int) -> Any:
        drawn.append(epoch)
        return [(torch.tensor([epoch, i]), torch.tensor(0)) for i in range(3)]

    data = FreshEpochs(first=[(torch.tensor([0, i]), torch.tensor(0)) for i in range(3)], draw=draw)
    keys = EpochShuffle(data, seed=0, keyed=True)
    for epoch in (0, 1, 1, 2):
        keys.set_epoch(epoch)
        assert sorted(data[key][0].tolist() for key in keys) == [[epoch, i] for i in range(3)]
    assert drawn == [1, 2]  # each epoch drawn once, the one before it dropped


def test_fresh_examples_are_split_once_between_ddp_ranks(tmp_path: Path) -> None:
    """The keyed order is a DistributedSampler, so Lightning keeps it under DDP rather than
    wrapping it in a second split; each rank's keys are its share of one order, every index once."""
    loader = fresh_copy_task(tmp_path).train_dataloader()
    assert isinstance(loader.sampler, DistributedSampler)
    shares = [
        list(EpochShuffle(loader.dataset, seed=0, keyed=True, num_replicas=2, rank=rank))
        for rank in (0, 1)
    ]
    assert all(epoch == 0 for share in shares for epoch, _ in share)
    indices = [index for share in shares for _, index in share]
    assert sorted(indices) == list(range(40)) and len(shares[0]) == len(shares[1]) == 20
