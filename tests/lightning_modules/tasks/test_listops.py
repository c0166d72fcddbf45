"""ListOps: the label is the value of the expression; batches are right-padded with labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_synthetic import build

from mixerlab.lightning_modules.tasks import PAD_ID
from mixerlab.lightning_modules.tasks.listops import (
    LISTOPS_TOKENS,
    ListOpsDataModule,
    listops_decode,
)


def evaluate_listops(text: str) -> int:
    """An independent evaluator of the LRA text form, with a stack instead of recursion."""
    ops = {
        "[MAX": max,
        "[MIN": min,
        "[MED": lambda a: int(np.median(a)),
        "[SM": lambda a: sum(a) % 10,
    }
    stack: list[tuple[str, list[int]]] = [("", [])]
    for token in text.split():
        if token in ops:
            stack.append((token, []))
        elif token == "]":
            op, args = stack.pop()
            stack[-1][1].append(ops[op](args))
        else:
            stack[-1][1].append(int(token))
    ((_, (value,)),) = stack
    return value


def nesting_depth(text: str) -> int:
    depth = deepest = 0
    for token in text.split():
        depth += token.startswith("[") - (token == "]")
        deepest = max(deepest, depth)
    return deepest


def test_listops_label_is_the_value_of_the_expression(tmp_path):
    dm = build(tmp_path, "listops")
    labels = dm.train_dataset["target"]
    for x, label in zip(dm.train_dataset["input"], labels, strict=True):
        text = listops_decode(x)
        assert text.startswith("[") and text.endswith("]")
        assert evaluate_listops(text) == label
        assert 16 <= len(x) <= 48
        assert 1 <= nesting_depth(text) <= 3
    assert len(set(labels)) == 10


def test_listops_batches_are_right_padded_with_labels(tmp_path):
    dm = build(tmp_path, "listops")
    batch = next(iter(dm.val_dataloader()))
    assert batch["target"].shape == (16,)
    lengths = batch["mask"].sum(1)
    assert len(lengths.unique()) > 1
    assert batch["input"].shape[1] == lengths.max()
    assert (batch["mask"] == (torch.arange(batch["input"].shape[1]) < lengths[:, None])).all()
    assert (batch["input"][~batch["mask"]] == PAD_ID).all()
    assert (batch["input"][batch["mask"]] != PAD_ID).all()
    assert (batch["input"] < len(LISTOPS_TOKENS)).all()


def test_listops_rejects_bad_settings():
    with pytest.raises(ValueError, match="min_length"):
        ListOpsDataModule(batch_size=8, min_length=64, max_length=32)
    with pytest.raises(ValueError, match="batch_size"):
        ListOpsDataModule(batch_size=0)
