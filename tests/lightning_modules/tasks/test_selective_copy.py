"""Selective copying: the data tokens in order at the markers, at random spacing."""

from __future__ import annotations

import numpy as np
import pytest
from test_synthetic import build

from mixerlab.lightning_modules.tasks import IGNORE_INDEX
from mixerlab.lightning_modules.tasks.selective_copy import SelectiveCopyDataModule


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


def test_selective_copy_rejects_bad_settings():
    with pytest.raises(ValueError, match="do not fit"):
        SelectiveCopyDataModule(batch_size=8, seq_len=4, num_data_tokens=5)
