"""The seq2seq LightningModule: the loss over the target's tokens, and an exact-sequence
accuracy read teacher-forced that equals greedy decoding's."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch

from mixerlab.lightning_modules.modules import Seq2SeqModule, exact_sequences
from mixerlab.lightning_modules.tasks import IGNORE_INDEX
from mixerlab.lightning_modules.tasks._base import BOS_ID, EOS_ID
from mixerlab.lightning_modules.tasks._loading import seq2seq_collate
from mixerlab.mixers import EncoderDecoderModel

VOCAB = 6  # pad, start, end and three symbols


def test_exact_sequences_needs_every_scored_token_of_a_row_right() -> None:
    rows = torch.tensor([0, 0, 0, 2, 2, 3])
    correct = torch.tensor([True, True, True, True, False, True])
    # row 1 has no scored token and is left out
    assert exact_sequences(rows, correct, 4).tolist() == [1.0, 0.0, 1.0]


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    """Copying one to three of three symbols: every source once, short enough that a model
    trained for a few steps writes some targets exactly and not others."""
    sources = [torch.tensor(s) for n in (1, 2, 3) for s in itertools.product(range(3, 6), repeat=n)]
    return seq2seq_collate([(s, torch.cat([s, torch.tensor([EOS_ID])])) for s in sources])


def _module(seed: int) -> Seq2SeqModule:
    """A small encoder-decoder, untrained."""
    torch.manual_seed(seed)
    model = EncoderDecoderModel(
        VOCAB, VOCAB, d_model=16, n_encoder_layers=1, n_decoder_layers=1, max_source_len=3,
        max_target_len=4, encoder_mixer="conv", decoder_mixer="attention",
    )  # fmt: skip
    return Seq2SeqModule(model, optimizer=functools.partial(torch.optim.AdamW, lr=1e-2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_teacher_forced_exact_match_is_greedy_decodings(batch, seed: int) -> None:
    module = _module(seed)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    for _ in range(15):
        logits, target = module._scored(batch)
        torch.nn.functional.cross_entropy(logits, target).backward()
        optimizer.step()
        optimizer.zero_grad()
    module.eval()
    with torch.no_grad():
        module.validation_step(batch, 0)
    exact = module.val_all.exact_acc.compute().item()

    model, target = module.model, batch["target"]
    prompt = torch.full((len(target), 1), BOS_ID)
    written = model.generate(
        batch["source"], prompt, target.shape[1], batch["source_mask"], temperature=0
    )[:, 1:]
    scored = target != IGNORE_INDEX
    greedy = ((written == target) | ~scored).all(dim=1).float().mean().item()
    assert exact == pytest.approx(greedy)
    assert 0 < exact < 1  # some targets right and some wrong: the comparison says something


def test_validation_logs_token_and_sequence_accuracy(batch) -> None:
    module = _module(0)
    assert module.val_metric_names() == ["val/loss", "val/acc", "val/exact_acc", "val/ppl"]
    logits, target = module._scored(batch)
    assert logits.shape == (int((batch["target"] != IGNORE_INDEX).sum()), VOCAB)
    assert torch.equal(target, batch["target"][batch["target"] != IGNORE_INDEX])
