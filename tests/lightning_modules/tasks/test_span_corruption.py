"""T5's span corruption: the source with spans replaced by sentinels and the target listing them
put the row back together; T5's counts; fixed validation corruption, fresh training corruption.
(An end-to-end run on the embedded corpus: tests/end_to_end/test_train.py.)"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_text import _folder, offline  # noqa: F401  (offline: autouse, no Hub)

from mixerlab.lightning_modules.tasks import IGNORE_INDEX, build_task
from mixerlab.lightning_modules.tasks.span_corruption import SpanCorruption, noise_counts

VOCAB = 300
CORRUPT = SpanCorruption(start_id=VOCAB, end_id=VOCAB + 1, first_sentinel=VOCAB + 2, density=0.15)


def restored(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The row a (source, target) pair was made from: each sentinel of the source replaced by
    what follows it in the target."""
    spans, sentinel = {}, None
    for token in target[:-1]:
        if token >= CORRUPT.first_sentinel:
            sentinel, spans[int(token)] = int(token), []
        else:
            spans[sentinel].append(int(token))
    out = []
    for token in source:
        out += spans[int(token)] if token >= CORRUPT.first_sentinel else [int(token)]
    return np.array(out)


@pytest.mark.parametrize("length", [1, 2, 3, 7, 20, 64, 128])
def test_source_and_target_put_the_row_back_with_t5s_counts(length: int) -> None:
    rng = np.random.default_rng(length)
    for trial in range(20):
        row = rng.integers(0, VOCAB, size=length)
        source, target = CORRUPT.corrupt(row, np.random.default_rng(trial))
        assert np.array_equal(restored(source, target), row)
        noise, spans = noise_counts(length, 0.15, 3.0)
        sentinels = target[target >= CORRUPT.first_sentinel]
        assert np.array_equal(sentinels, VOCAB + 2 + np.arange(spans))  # in order, once each
        assert np.array_equal(source[source >= CORRUPT.first_sentinel], sentinels)
        assert len(target) == noise + spans + 1 and target[-1] == CORRUPT.end_id
        assert len(source) == length - noise + spans
        if length >= 2:
            assert source[0] < CORRUPT.first_sentinel  # T5 starts with a kept segment


def test_t5s_counts_at_its_settings() -> None:
    assert noise_counts(512, 0.15, 3.0) == (77, 26)  # T5: round(76.8) noise tokens, 26 spans
    assert noise_counts(128, 0.15, 3.0) == (19, 6)
    assert noise_counts(1, 0.15, 3.0) == (1, 1)  # a one-token row: the token is the span
    assert noise_counts(2, 0.15, 3.0) == (1, 1)  # and one token stays


def test_spans_fall_anywhere_and_vary_in_length() -> None:
    rows = torch.arange(3, 67).repeat(400, 1)  # 400 rows of 64 distinct tokens
    lengths = torch.full((400,), 64)
    batch = CORRUPT((rows, lengths, [(0, i) for i in range(400)]))
    hidden = torch.zeros(64)
    span_lengths = []
    for target in batch["target"]:
        tokens = target[(target != IGNORE_INDEX) & (target < VOCAB)]
        hidden[tokens - 3] += 1
        marks = torch.nonzero((target >= VOCAB + 2) | (target == VOCAB + 1)).flatten()
        span_lengths += (marks.diff() - 1).tolist()
    assert (hidden[1:] > 0).all()  # every position but the first is hidden somewhere
    assert np.mean(span_lengths) == pytest.approx(10 / 3, abs=0.3) and min(span_lengths) >= 1


def test_a_batch_starts_the_decoder_with_the_tasks_start_token() -> None:
    rows = torch.randint(3, VOCAB, (4, 32))
    lengths = torch.tensor([32, 20, 5, 1])
    batch = CORRUPT((rows, lengths, [(1, i) for i in range(4)]))
    for i in range(4):
        n = int(batch["mask"][i].sum())
        assert batch["input"][i, 0] == VOCAB
        assert torch.equal(batch["input"][i, 1:n], batch["target"][i, : n - 1])
        s = int(batch["source_mask"][i].sum())
        row = restored(batch["source"][i, :s].numpy(), batch["target"][i, :n].numpy())
        assert np.array_equal(row, rows[i, : lengths[i]].numpy())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _folder(tmp_path_factory.mktemp("span") / "corpus")


def _dm(root: Path, seed: int = 0):
    dm = build_task(
        "span_corruption", seed=seed, cache_dir=str(root.parent / "cache"), source=str(root),
        seq_len=32, batch_size=4, split=(0.6, 0.2, 0.2),
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    dm.check_ready()
    return dm


def test_the_task_sizes_its_vocabulary_and_lengths_and_fixes_validation(corpus: Path) -> None:
    dm, other_seed = _dm(corpus), _dm(corpus, seed=1)
    assert (dm.task_type, dm.start_id, dm.bytes_per_token) == ("seq2seq", 256, None)
    noise, spans = noise_counts(32, 0.15, 3.0)
    assert dm.vocab_size == 256 + 2 + spans and dm.max_len == noise + spans + 1
    val, again = list(dm.val_dataloader()), list(other_seed.val_dataloader())
    for batch, same in zip(val, again, strict=True):
        assert batch["source"].shape[1] <= dm.max_source_len
        assert batch["input"].shape[1] <= dm.max_len
        assert torch.equal(batch["target"], same["target"])  # every run scores the same spans
    loader = dm.train_dataloader()
    first = next(iter(loader))
    loader.sampler.set_epoch(1)
    assert not torch.equal(first["source"], next(iter(loader))["source"])  # fresh each epoch
    (chance,) = dm.baselines().values()
    assert chance.label == "unigram" and 0 < chance.loss < math.log(dm.vocab_size)


def test_a_bad_span_length_is_named() -> None:
    with pytest.raises(ValueError, match=r"mean_span_length=0\.5 must be at least 1 token"):
        build_task("span_corruption", seed=0, cache_dir=None, mean_span_length=0.5)
