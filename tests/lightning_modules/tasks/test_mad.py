"""MAD's six tasks against MAD's generators (mad/data/instances.py): what is drawn from which
ids, what is scored, the memorization map, chance levels, the run's seed alone, and a run."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from configs import run_config
from test_synthetic import build

from mixerlab.experiments.cli.list_components import list_components
from mixerlab.experiments.run.budget import size_model
from mixerlab.lightning_modules.tasks import IGNORE_INDEX, build_task
from mixerlab.lightning_modules.tasks._mad import first_occurrences

MAD_TASKS = (
    "mad_recall",
    "mad_noisy_recall",
    "mad_fuzzy_recall",
    "mad_selective_copy",
    "mad_memorization",
    "mad_compression",
)


def examples(dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (np.array(x), np.array(y)) for x, y in zip(dataset["input"], dataset["target"], strict=True)
    ]


def whole_sequence(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A recall example's whole sequence: the input, then the last target (its last token)."""
    return np.append(x, y[-1])


def runs(tokens: np.ndarray, is_key: np.ndarray) -> list[np.ndarray]:
    """Maximal runs of key tokens and of value tokens: the motifs (the halves are disjoint)."""
    cuts = np.flatnonzero(np.diff(is_key.astype(int))) + 1
    return np.split(tokens, cuts)


# -- in-context recall, noisy or not ----------------------------------------------------------


@pytest.mark.parametrize("name", ["mad_recall", "mad_noisy_recall"])
def test_recall_trains_on_every_next_token_and_scores_recurring_keys_values(tmp_path, name):
    dm = build(tmp_path, name)
    first_value, first_noise = 1 + dm.num_keys, 1 + dm.num_keys + dm.num_values
    assert (dm.num_keys, dm.num_values) == (8, 8)
    assert dm.vocab_size == first_noise + dm.noise_vocab_size
    for x, y in examples(dm.train_dataset):
        assert len(x) == 31 and (y[:-1] == x[1:]).all()
    for x, y in examples(dm.val_datasets["val"]):
        pairs = whole_sequence(x, y).reshape(-1, 2)
        expected = np.full(len(x), IGNORE_INDEX)
        value_of: dict[int, int] = {}
        for i, (key, value) in enumerate(pairs):
            if key >= first_noise:  # a noise pair: two noise tokens, never scored
                assert value >= first_noise
                continue
            assert 1 <= key < first_value <= value < first_noise
            if key in value_of:  # scored where the input is a key shown before, with its value
                assert value_of[key] == value
                expected[2 * i] = value
            value_of[key] = value
        assert y[-1] != IGNORE_INDEX  # the final pair always queries a key shown before
        assert (y == expected).all()


@pytest.mark.parametrize("frac_noise", [0.2, 0.6])
def test_noisy_recall_makes_frac_noise_of_the_context_pairs_noise(tmp_path, frac_noise):
    dm = build(tmp_path, "mad_noisy_recall", frac_noise=frac_noise, num_train=2000)
    x = np.array(dm.train_dataset["input"])
    context = x[:, : 2 * 15].reshape(len(x), 15, 2)  # seq_len 32: 15 pairs, then the query
    noise = context >= 1 + dm.num_keys + dm.num_values
    assert (noise[..., 0] == noise[..., 1]).all()  # noise comes in whole pairs
    assert (~noise[..., 0]).any(axis=1).all()  # one pair always stays a key-value pair
    expected = frac_noise * 14 / 15  # one of the 15 is drawn to stay a pair
    assert noise[..., 0].mean() == pytest.approx(expected, abs=0.02)
    assert set(np.unique(context[noise])) == set(range(17, 33))  # the 16 noise tokens


def test_first_occurrences_marks_each_values_first_place_per_row():
    codes = np.array([[3, 1, 3, 3, 1], [2, 2, 0, 2, 0]])
    expected = [[True, True, False, False, False], [True, False, True, False, False]]
    assert first_occurrences(codes).tolist() == expected


# -- fuzzy in-context recall ----------------------------------------------------------------


def fuzzy_motifs(dm, x: np.ndarray, y: np.ndarray) -> tuple[list[np.ndarray], int]:
    """A fuzzy example's motifs (key, value, key, ...) after MAD's left padding, and its length."""
    sequence = whole_sequence(x, y)
    pad = dm.vocab_size - 1  # MAD's pad token, one up
    n_pad = int(np.argmax(sequence != pad))
    tokens = sequence[n_pad:]
    assert (tokens != pad).all() and n_pad >= 2
    return runs(tokens, tokens <= dm.num_keys), n_pad


def test_fuzzy_recall_motifs_have_mads_sizes_and_scored_values_recur(tmp_path):
    dm = build(tmp_path, "mad_fuzzy_recall", num_train=1000)
    assert (dm.num_keys, dm.num_values, dm.vocab_size) == (7, 8, 17)
    key_sizes: Counter[int] = Counter()
    for x, y in examples(dm.train_dataset):
        assert len(x) == 32 and (y[:-1] == x[1:]).all()  # every next token, MAD's pad included
        motifs, _ = fuzzy_motifs(dm, x, y)
        key_sizes.update(len(key) for key in motifs[0::2])
        assert all(1 <= len(motif) <= 3 and len(set(motif)) == len(motif) for motif in motifs)
    shares = np.array([key_sizes[size] for size in (1, 2, 3)]) / key_sizes.total()
    assert shares == pytest.approx([1 / 3] * 3, abs=0.05)  # key sizes drawn uniformly

    for x, y in examples(dm.val_datasets["val"]):
        motifs, n_pad = fuzzy_motifs(dm, x, y)
        keys, values = motifs[0::2], motifs[1::2]
        assert len(keys) == len(values) and all(len(key) == 3 for key in keys)  # test: full keys
        assert all((v > dm.num_keys).all() and len(set(v)) == len(v) <= 3 for v in values)
        expected = np.full(len(x) + 1, IGNORE_INDEX)  # aligned with the whole sequence
        value_of: dict[tuple, tuple] = {}
        place = n_pad
        for i, (key, value) in enumerate(zip(keys, values, strict=True)):
            place += len(key)
            if tuple(key) in value_of or i == len(keys) - 1:  # recurring, or the final query
                expected[place : place + len(value)] = value
            if tuple(key) in value_of:
                assert value_of[tuple(key)] == tuple(value)
            value_of[tuple(key)] = tuple(value)
            place += len(value)
        assert (y == expected[1:]).all()


# -- selective copying, memorization, compression -------------------------------------------


def test_selective_copy_is_mads_layout(tmp_path):
    dm = build(tmp_path, "mad_selective_copy", num_train=1000)
    seq_len, m, blank, copy = 32, 4, 15, 16  # MAD's 14 and 15, one up
    first_places = []
    for x, y in examples(dm.train_dataset):
        assert len(x) == seq_len and x[seq_len - m - 1] == copy
        assert (x[seq_len - m :] == blank).all() and (y[: seq_len - m] == IGNORE_INDEX).all()
        region = x[: seq_len - m - 1]
        to_copy = region[region != blank]
        assert len(to_copy) == m and (to_copy >= 1).all() and (to_copy < blank).all()
        assert region[-1] != blank  # blanks only ever go before a token, never after the last
        assert (y[seq_len - m :] == to_copy).all()
        first_places.append(np.argmax(region != blank))
    # each of the seq_len - 2m - 1 blanks goes before one of the m tokens, uniformly
    assert np.mean(first_places) == pytest.approx((seq_len - 2 * m - 1) / m, abs=0.5)


def test_memorization_map_is_fixed_one_to_one_and_follows_the_seed(tmp_path):
    dm = build(tmp_path / "a", "mad_memorization")
    facts = dm.facts()
    assert len(facts) == dm.num_keys == 15 and len(set(facts)) == 15  # one to one
    assert (facts >= dm.num_keys).all() and (facts < dm.insert_token).all()
    assert (dm.facts() == facts).all()
    for dataset in (dm.train_dataset, dm.val_datasets["val"]):
        for x, y in examples(dataset):
            keys = x[0::2] - 1
            assert (keys < dm.num_keys).all() and (x[1::2] == dm.insert_token + 1).all()
            assert (y[1::2] == facts[keys] + 1).all() and (y[0::2] == IGNORE_INDEX).all()
    assert (build(tmp_path / "b", "mad_memorization").facts() == facts).all()
    assert (build(tmp_path / "c", "mad_memorization", seed=1).facts() != facts).any()


def test_compression_scores_every_token_of_the_sequence_itself(tmp_path):
    dm = build(tmp_path, "mad_compression")
    for x, y in examples(dm.train_dataset):
        assert len(x) == 16 and (y == x).all()
        assert x[-1] == dm.compression_token + 1 and (x[:-1] >= 1).all()
        assert (x[:-1] <= dm.compression_token).all()
    assert dm.task_type == "reconstruction" and dm.causal


# -- chance levels, seeds, bad settings -----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "answers"),
    [
        ("mad_recall", range(9, 17)),
        ("mad_noisy_recall", range(9, 17)),
        ("mad_fuzzy_recall", range(8, 16)),
        ("mad_selective_copy", range(1, 15)),
        ("mad_memorization", None),  # the values the keys map to
    ],
)
def test_chance_is_a_uniform_guess_over_what_validation_asks(tmp_path, name, answers):
    dm = build(tmp_path, name, num_val=300)
    if answers is None:
        answers = dm.facts() + 1
    y = np.array(dm.val_datasets["val"]["target"])
    assert set(np.unique(y[y != IGNORE_INDEX])) == set(answers)
    (baseline,) = dm.baselines().values()
    assert baseline.acc == pytest.approx(1 / len(answers))
    assert baseline.loss == pytest.approx(math.log(len(answers)))


def test_compression_chance_is_the_answers_prior(tmp_path):
    dm = build(tmp_path, "mad_compression", seq_len=32)
    (baseline,) = dm.baselines().values()
    y = np.array(dm.val_datasets["val"]["target"]).ravel()
    prior = np.full(dm.vocab_size, 31 / 32 / 15)  # 15 tokens share 31 of 32 positions
    prior[dm.compression_token + 1] = 1 / 32
    assert baseline.loss == pytest.approx(-np.log(prior[y]).mean())
    assert baseline.acc == pytest.approx(31 / 32 / 15)


@pytest.mark.parametrize("name", MAD_TASKS)
def test_generation_reads_and_changes_no_global_random_state(tmp_path, name):
    dm = build(tmp_path, name)
    drawn = []
    for global_seed in (1, 2):
        np.random.seed(global_seed)
        torch.manual_seed(global_seed)
        random.seed(global_seed)
        before = (np.random.get_state()[1].copy(), torch.get_rng_state(), random.getstate())
        for part in (*dm.train_parts, *dm.val_parts):
            drawn.append(dm.generate(np.random.default_rng(0), 20, **part.settings))
        assert (np.random.get_state()[1] == before[0]).all()
        assert torch.equal(torch.get_rng_state(), before[1]) and random.getstate() == before[2]
    half = len(drawn) // 2
    for (x1, y1), (x2, y2) in zip(drawn[:half], drawn[half:], strict=True):
        assert np.array_equal(np.asarray(x1), np.asarray(x2)) and np.array_equal(y1, y2)


@pytest.mark.parametrize(
    ("name", "settings", "message"),
    [
        ("mad_recall", {"seq_len": 31}, "even seq_len >= 4"),
        ("mad_recall", {"frac_noise": 0.5}, "set noise_vocab_size"),
        ("mad_noisy_recall", {"frac_noise": 1.0}, "probability below 1"),
        ("mad_noisy_recall", {"vocab_size": 17}, "leaves 1 tokens beside the 16 noise"),
        ("mad_fuzzy_recall", {"vocab_size": 6}, "raise it to >= 7"),
        ("mad_fuzzy_recall", {"seq_len": 12}, r"seq_len > 2 \* \(k_motif_size"),
        ("mad_selective_copy", {"seq_len": 33}, r"seq_len > 2 \* num_tokens_to_copy \+ 1 = 33"),
        ("mad_memorization", {"seq_len": 31}, "even seq_len"),
        ("mad_compression", {"vocab_size": 1}, "vocab_size >= 2"),
    ],
)
def test_bad_settings_name_the_problem_and_the_fix(name, settings, message):
    with pytest.raises(ValueError, match=message):
        build_task(name, seed=0, cache_dir=None, **settings)


# -- a run ----------------------------------------------------------------------------------


def test_mixerlab_list_shows_the_six_tasks():
    tasks = dict(list_components()["tasks"])
    assert all("(MAD) - " in tasks[name] for name in MAD_TASKS)


@pytest.mark.parametrize(
    ("task", "readout"), [("mad_compression", "last_state"), ("mad_recall", "per_position")]
)
def test_compression_is_read_from_the_last_state(task, readout):
    config = run_config(f"task={task}")
    dm = build_task(task, seed=0, cache_dir=None, **config["task"]["datamodule"])
    assert size_model(config, dm).arguments["readout"] == readout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "length"),
    [
        ("mad_recall", "task.datamodule.seq_len=16"),
        ("mad_compression", "task.datamodule.seq_len=6"),
    ],
)
def test_a_mad_task_trains_through_the_command_line(tmp_path, task, length):
    run_dir = tmp_path / "run"
    argv = [
        f"task={task}",
        "experiment=smoke",
        "debug=default",
        "logger=none",
        "callbacks.progress_bar=false",
        length,
        "task.datamodule.num_train=256",
        "task.datamodule.num_val=64",
        "task.datamodule.batch_size=16",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "mixerlab.experiments.cli", "train", *argv],
        cwd=tmp_path,
        env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(Path(run_dir / "results.json").read_text())
    assert results["status"] == "finished" and results["task"] == task
    assert math.isfinite(results["best"]["val/loss"]) and "val/acc" in results["chance"]
    kind = "reconstruction" if task == "mad_compression" else "lm"
    assert results["config"]["task"]["type"] == kind
