"""Chance levels: each task's baselines agree with the data its generator makes, and a run
records them in results.json under the names of the metrics it logs."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest
from test_synthetic import build
from test_text import _dm, _folder

from mixerlab.lightning_modules.callbacks import chance_levels
from mixerlab.lightning_modules.tasks import IGNORE_INDEX, Baseline, TaskDataModule

UNIFORM = ("mqar", "selective_copy", "induction_heads")


def scored_targets(examples) -> np.ndarray:
    targets = examples.targets.numpy()
    return targets[targets != IGNORE_INDEX]


@pytest.mark.parametrize("name", UNIFORM)
def test_uniform_tasks_guess_over_exactly_the_answers_the_generator_draws(tmp_path, name):
    dm = build(tmp_path, name, num_train=600)
    baselines = dm.baselines()
    assert list(baselines) == dm.val_set_names
    answers = np.unique(scored_targets(dm._train))
    for baseline in baselines.values():
        assert baseline.label == "chance" and f"the {len(answers)} " in baseline.how
        assert baseline.acc == pytest.approx(1 / len(answers))
        assert baseline.loss == pytest.approx(math.log(len(answers)))
    for examples in dm._vals:  # validation answers come from the same alphabet
        assert set(np.unique(scored_targets(examples))) <= set(answers)


def test_mqar_chance_follows_the_vocabulary(tmp_path):
    small, large = build(tmp_path / "s", "mqar"), build(tmp_path / "l", "mqar", vocab_size=128)
    assert small.num_values == 31 and large.num_values == 63  # (vocab - 2 special) / 2, rounded up
    assert large.baselines()["val"].acc == pytest.approx(1 / 63)


def test_listops_chance_is_the_majority_class_of_each_validation_set(tmp_path):
    dm = build(tmp_path, "listops", num_val=300)
    (baseline,) = dm.baselines().values()
    labels = dm._vals[0].targets.numpy()
    counts = np.bincount(labels, minlength=10)
    assert baseline.acc == pytest.approx(counts.max() / len(labels)) and baseline.acc >= 0.1
    share = counts[counts > 0] / len(labels)
    assert baseline.loss == pytest.approx(-(share * np.log(share)).sum(), rel=0.02)  # entropy
    assert f"majority class {counts.argmax()}" in baseline.how


def test_text_chance_is_the_training_unigram_scored_on_validation(tmp_path):
    dm = _dm(_folder(tmp_path / "corpus"), tmp_path / "cache")
    (baseline,) = dm.baselines().values()
    train, val = (
        np.concatenate([np.asarray(ids) for ids in dm.tokens[split]["ids"]])
        for split in ("train", "val")
    )
    p = (np.bincount(train, minlength=256) + 1) / (len(train) + 256)
    assert baseline.label == "unigram" and "byte frequencies" in baseline.how
    assert baseline.loss == pytest.approx(-np.log(p[val]).mean())
    assert baseline.acc == pytest.approx(np.mean(val == np.argmax(p)))
    assert baseline.loss < math.log(256)  # text is far from uniform bytes


def test_a_task_that_declares_nothing_has_no_chance_levels():
    assert TaskDataModule.baselines(object()) == {}


def fit_trainer(task, logged: list[str]) -> SimpleNamespace:
    """What chance_levels reads from a Trainer that started fitting."""
    return SimpleNamespace(
        datamodule=task, lightning_module=SimpleNamespace(val_metric_names=lambda: logged)
    )


def fake_task(baselines: dict[str, Baseline], bytes_per_token: float | None = None):
    return SimpleNamespace(
        baselines=lambda: baselines, val_set_names=list(baselines), bytes_per_token=bytes_per_token
    )


def test_levels_are_recorded_under_the_logged_metric_names():
    guess = Baseline.uniform(4, "4 answers")
    task = fake_task({"short": guess, "long": guess})
    per_set = [f"val/{kind}@{name}" for kind in ("loss", "acc") for name in ("short", "long")]
    logged = ["val/loss", "val/acc", "val/ppl", *per_set]
    levels = chance_levels(fit_trainer(task, logged))
    assert set(levels) == set(logged)
    how = "uniform guess over 4 answers"
    assert levels["val/acc@long"] == {"value": 0.25, "label": "chance", "how": how}
    assert levels["val/ppl"]["value"] == pytest.approx(4.0)
    assert levels["val/loss"]["value"] == pytest.approx(math.log(4))

    # different levels per set: the pooled metrics depend on the sets' sizes, so none is claimed
    task = fake_task({"short": guess, "long": Baseline.uniform(8, "8 answers")})
    assert set(chance_levels(fit_trainer(task, logged))) == set(logged[3:])


def test_bits_per_byte_follow_from_the_loss():
    unigram = Baseline("unigram", loss=2.0, acc=0.1, how="the training split's byte frequencies")
    levels = chance_levels(fit_trainer(fake_task({"val": unigram}, 1.5), ["val/loss", "val/bpb"]))
    assert levels["val/bpb"]["value"] == pytest.approx(2.0 / math.log(2) / 1.5)
    assert levels["val/bpb"]["label"] == "unigram" and "val/acc" not in levels  # not logged


def test_no_levels_before_fit_or_when_the_task_fails_to_say(caplog):
    assert chance_levels(None) == {}
    assert chance_levels(SimpleNamespace(datamodule=None, lightning_module=None)) == {}

    def broken():
        raise KeyError("val")

    task = SimpleNamespace(baselines=broken, val_set_names=["val"], bytes_per_token=None)
    with caplog.at_level(logging.WARNING):
        assert chance_levels(fit_trainer(task, ["val/acc"])) == {}
    assert "baselines() failed" in caplog.text
