"""A finished run's trained model and one validation example of its task, for ``mixerlab maps``.

The run is rebuilt from its record (``results.json``'s resolved config, the one place that says
what ran) and the weights of ``checkpoints/best.ckpt`` (else ``last.ckpt``); the example is row
``index`` of the first validation set, cut to its real tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mixerlab.experiments.run.build import build_datamodule, build_model
from mixerlab.lightning_modules.checkpoints import load_checkpoint
from mixerlab.lightning_modules.tasks._base import IGNORE_INDEX, TaskDataModule
from mixerlab.mixers import SequenceModel

CHECKPOINTS = ("best.ckpt", "last.ckpt")


@dataclass(frozen=True)
class TrainedRun:
    """A run's name (its folder), its model with the trained weights, and its task's data."""

    name: str
    model: SequenceModel
    data: TaskDataModule
    config: dict[str, Any]


@dataclass(frozen=True)
class Example:
    """One validation example: its tokens (1, L) and where the task scores the output."""

    tokens: Tensor
    scored: Tensor


def load_run(run_dir: Path) -> TrainedRun:
    """The run in ``run_dir`` with its trained weights; ValueError naming what is missing."""
    record = run_dir / "results.json"
    if not record.is_file():
        raise ValueError(
            f"{run_dir}: no results.json here; pass a run folder that `mixerlab train` wrote"
        )
    config = json.loads(record.read_text()).get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{record} holds no config: the run did not start")
    found = [run_dir / "checkpoints" / name for name in CHECKPOINTS]
    checkpoint = next((path for path in found if path.is_file()), None)
    if checkpoint is None:
        raise ValueError(
            f"{run_dir}: no checkpoints/best.ckpt or last.ckpt (a study's clone keeps only the "
            "records): train or resume the run here first"
        )
    data = build_datamodule(config)
    model = build_model(config, data)
    state = load_checkpoint(checkpoint)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    return TrainedRun(run_dir.name, model.eval(), data, config)


def validation_example(data: TaskDataModule, index: int) -> Example:
    """Row ``index`` of the first validation set, its real tokens only."""
    if index < 0:
        raise ValueError(f"--example counts from 0, got {index}")
    loader = data.val_dataloader()
    first = loader[0] if isinstance(loader, (list, tuple)) else loader
    seen = 0
    for batch in first:
        rows = batch["input"].shape[0]
        if index < seen + rows:
            row = index - seen
            length = int(batch["mask"][row].sum())
            target = batch["target"][row]
            if target.dim():  # per position, -100 where unscored
                scored = target[:length] != IGNORE_INDEX
            else:  # a label read from the whole sequence
                scored = torch.ones(length, dtype=torch.bool)
            return Example(batch["input"][row : row + 1, :length], scored)
        seen += rows
    raise ValueError(f"--example {index} is past the validation set's {seen} examples")
