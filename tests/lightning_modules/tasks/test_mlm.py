"""The masked-LM task: BERT's masking statistics, what is scored, padding, fixed validation masks,
fresh training masks, the unigram baseline and a tiny end-to-end run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from configs import TINY, compose_config
from test_text import _folder, offline  # noqa: F401  (offline: autouse, no Hub)

from mixerlab.experiments.run.train import train
from mixerlab.lightning_modules.tasks import IGNORE_INDEX, PAD_ID, Baseline, build_task
from mixerlab.lightning_modules.tasks.mlm import BertMasking, MaskedLMDataModule

VOCAB = 1000  # large, so a random replacement rarely equals the token it replaces
MASK_ID = VOCAB


def _rows(n: int, seq_len: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Random padded rows of random real lengths, with one masking key per row."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, seq_len + 1, (n,), generator=g)
    ids = torch.randint(0, VOCAB, (n, seq_len), generator=g)
    ids[torch.arange(seq_len) >= lengths[:, None]] = PAD_ID
    return ids, lengths, [(seed, row) for row in range(n)]


def test_masking_follows_bert_shares_on_a_large_sample() -> None:
    ids, lengths, keys = _rows(4000, 64)
    batch = BertMasking(MASK_ID, n_tokens=VOCAB)((ids, lengths, keys))
    selected = batch["target"] != IGNORE_INDEX
    # Exactly round(15%) of each row's real tokens, at least one.
    expected = (lengths * 0.15).round().clamp_min(1)
    assert torch.equal(selected.sum(1), expected.long())
    assert selected.sum() / lengths.sum() == pytest.approx(0.15, abs=0.005)
    chosen, original = batch["input"][selected], ids[selected]
    n = selected.sum().item()
    as_mask = (chosen == MASK_ID).sum().item() / n
    kept = (chosen == original).sum().item() / n
    randomised = ((chosen != MASK_ID) & (chosen != original)).sum().item() / n
    assert as_mask == pytest.approx(0.8, abs=0.01)
    assert kept == pytest.approx(0.1, abs=0.01)
    assert randomised == pytest.approx(0.1, abs=0.01)
    assert chosen.min() >= 0 and chosen.max() <= MASK_ID  # random tokens are real tokens
    # Which position is selected does not depend on where it is in the row.
    full = torch.full((2000,), 64)
    batch = BertMasking(MASK_ID, n_tokens=VOCAB)((ids[:2000], full, keys[:2000]))
    by_position = (batch["target"] != IGNORE_INDEX).float().mean(0)
    assert by_position.min() > 0.12 and by_position.max() < 0.18


def test_only_selected_positions_are_scored_and_padding_never() -> None:
    ids, lengths, keys = _rows(500, 32, seed=1)
    batch = BertMasking(MASK_ID, n_tokens=VOCAB, rate=0.3)((ids, lengths, keys))
    real = torch.arange(32) < lengths[:, None]
    selected = batch["target"] != IGNORE_INDEX
    assert torch.equal(batch["mask"], real)
    assert not (selected & ~real).any()
    assert torch.equal(batch["target"][selected], ids[selected])  # the original token
    assert torch.equal(batch["input"][~selected], ids[~selected])  # the rest is untouched
    assert (batch["input"][~real] == PAD_ID).all()
    assert selected.sum() / real.sum() == pytest.approx(0.3, abs=0.01)


def test_masks_are_a_function_of_the_keys() -> None:
    ids, lengths, keys = _rows(64, 32, seed=2)
    masking = BertMasking(MASK_ID, n_tokens=VOCAB)
    first = masking((ids, lengths, keys))
    again = masking((ids.flip(0), lengths.flip(0), keys[::-1]))  # order within the batch
    for name in first:
        assert torch.equal(first[name], again[name].flip(0)), name
    other = masking((ids, lengths, [(9, row) for row in range(64)]))
    assert not torch.equal(first["target"], other["target"])


def _dm(root: Path, seed: int = 0, **kwargs) -> MaskedLMDataModule:
    args = {"seq_len": 32, "batch_size": 4, "split": (0.6, 0.2, 0.2), **kwargs}
    dm = build_task(
        "mlm", seed=seed, cache_dir=str(root.parent / "cache"), source=str(root), **args
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _all(loader) -> dict[str, torch.Tensor]:
    batches = list(loader)
    return {name: torch.cat([b[name] for b in batches]) for name in batches[0]}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _folder(tmp_path_factory.mktemp("mlm") / "corpus")


def test_rows_are_documents_cut_into_padded_pieces(corpus: Path) -> None:
    dm = _dm(corpus)
    assert (dm.name, dm.task_type, dm.causal) == ("mlm", "lm", False)
    assert (dm.vocab_size, dm.mask_id, dm.max_len, dm.bytes_per_token) == (257, 256, 32, None)
    dm.check_ready()
    for split, rows in dm.blocks.items():
        pieces = [bytes(ids[:n]) for ids, n in zip(rows["ids"], rows["length"], strict=True)]
        documents = [(corpus / name).read_bytes() for name in dm.documents(split)]
        cut = [doc[i : i + 32] for doc in documents for i in range(0, len(doc), 32)]
        assert pieces == cut, split
    batch = _all(dm.val_dataloader())
    assert batch["input"].shape[1] == 32 and not batch["mask"].all()  # some rows are padded
    assert (batch["target"][~batch["mask"]] == IGNORE_INDEX).all()
    assert (batch["target"] != MASK_ID).all() and (batch["input"] == 256).any()


def test_validation_masks_are_fixed_and_training_masks_fresh_each_epoch(corpus: Path) -> None:
    dm, other_seed = _dm(corpus, batch_size=64), _dm(corpus, seed=1)
    val = _all(dm.val_dataloader())
    for again in (_all(dm.val_dataloader()), _all(other_seed.val_dataloader())):
        for name in val:
            assert torch.equal(val[name], again[name]), name
    # Training: the same seed and epoch give the same batches, another epoch new masks.
    loader = dm.train_dataloader()
    epoch0 = _all(loader)
    loader.sampler.set_epoch(1)  # what Lightning does before each epoch, also on resume
    epoch1 = _all(loader)
    loader.sampler.set_epoch(0)
    assert torch.equal(_all(loader)["input"], epoch0["input"])
    assert torch.equal(
        _all(_dm(corpus, batch_size=64).train_dataloader())["input"], epoch0["input"]
    )
    assert not torch.equal(epoch0["target"], epoch1["target"])
    rows = {tuple(ids) for ids in dm.blocks["train"]["ids"]}
    for batch in (epoch0, epoch1):  # each is whole rows of the split, masked
        original = torch.where(batch["target"] == IGNORE_INDEX, batch["input"], batch["target"])
        assert set(map(tuple, original.tolist())) <= rows


def test_baseline_is_the_training_unigram_at_the_validation_masks(corpus: Path) -> None:
    dm = _dm(corpus)
    (baseline,) = dm.baselines().values()
    train = np.concatenate([np.asarray(ids) for ids in dm.tokens["train"]["ids"]])
    target = _all(dm.val_dataloader())["target"]
    scored = target[target != IGNORE_INDEX].numpy()
    p = (np.bincount(train, minlength=256) + 1) / (len(train) + 256)
    assert baseline == Baseline(
        "unigram",
        pytest.approx(-np.log(p[scored]).mean()),
        pytest.approx(np.mean(scored == np.argmax(p))),
        "the training split's byte frequencies, at the validation masks",
    )
    assert baseline.loss < math.log(256)


def test_bad_mask_rate_is_named(corpus: Path) -> None:
    with pytest.raises(ValueError, match=r"mask_rate=1\.5 must be a fraction in \(0, 1\)"):
        build_task("mlm", seed=0, cache_dir=None, mask_rate=1.5)


def test_a_tiny_run_trains_an_encoder_and_scores_masked_tokens(
    corpus: Path, tmp_path: Path
) -> None:
    overrides = [*TINY, "task=mlm", "logger=none", "task.datamodule.split=[0.6,0.2,0.2]"]
    cfg = compose_config(
        *overrides, f"task.datamodule.source={corpus}", f"cache_dir={tmp_path / 'cache'}"
    )
    train(cfg, tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "finished" and results["task"] == "mlm"
    for metric in ("val/loss", "val/acc", "val/ppl"):
        assert math.isfinite(results["best"][metric]), metric
    assert "val/bpb" not in results["best"]
    assert results["best"]["val/ppl"] == pytest.approx(math.exp(results["best"]["val/loss"]))
