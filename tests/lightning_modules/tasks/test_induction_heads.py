"""Induction heads: the token after the trigger's first occurrence, at any position."""

from __future__ import annotations

import numpy as np
import pytest
from test_synthetic import build

from mixerlab.lightning_modules.tasks import IGNORE_INDEX
from mixerlab.lightning_modules.tasks.induction_heads import InductionHeadsDataModule


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


def test_induction_heads_rejects_bad_settings():
    with pytest.raises(ValueError, match="length >= 3"):
        InductionHeadsDataModule(batch_size=8, seq_len=2)
    with pytest.raises(ValueError, match="duplicates"):
        InductionHeadsDataModule(batch_size=8, test_seq_lens=[32, 32])
