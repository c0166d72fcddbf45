"""The models ``mixerlab maps`` draws and the example it draws them on.

A trained run is rebuilt from its record (``results.json``'s resolved config, the one place that
says what ran) and the weights of ``checkpoints/best.ckpt`` (else ``last.ckpt``); an untrained
one from Hydra overrides, as ``mixerlab train`` would start it. The example is row ``index`` of
the first validation set, cut to its real tokens, or token ids given on the command line.
"""

from __future__ import annotations

import json
import shlex
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
    """A run's name (its folder, or the overrides of an untrained one), its model with the
    trained (or initial) weights, and its task's data."""

    name: str
    model: SequenceModel
    data: TaskDataModule
    config: dict[str, Any]


@dataclass(frozen=True)
class Example:
    """One validation example: its tokens (1, L) and where the task scores the output."""

    tokens: Tensor
    scored: Tensor


# Why an encoder-decoder's run is not drawn: a map is one stack's mixing of one sequence.
ENCODER_DECODER = (
    "an encoder-decoder (two stacks, two sequences), which the maps do not draw; its design's "
    "one-stack runs (design=decoder_only or encoder_only) read source and target as one sequence"
)
# Why a prefix LM's run is not drawn: its maps depend on each example's prefix, which the maps
# do not pass to the mixers yet.
PREFIX_LM = (
    "a prefix LM (model.prefix_lm: each example's prefix read both ways), which the maps do not "
    "draw yet; design=decoder_only reads the same examples plainly causally"
)


def undrawn(config: dict[str, Any]) -> str | None:
    """Why the maps cannot draw a run of ``config``'s model, or None when they can."""
    if config["model"].get("encoder"):
        return ENCODER_DECODER
    if config["model"].get("prefix_lm"):
        return PREFIX_LM
    return None


def checkpoint_of(run_dir: Path) -> Path | None:
    """The checkpoint a run's maps are drawn from: its best, else its last; None if neither."""
    found = [run_dir / "checkpoints" / name for name in CHECKPOINTS]
    return next((path for path in found if path.is_file()), None)


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
    checkpoint = checkpoint_of(run_dir)
    if checkpoint is None:
        raise ValueError(
            f"{run_dir}: no checkpoints/best.ckpt or last.ckpt (a study's clone keeps only the "
            "records): train or resume the run here first"
        )
    if why := undrawn(config):
        raise ValueError(f"{run_dir.name} is {why}")
    data = build_datamodule(config)
    model = build_model(config, data)
    state = load_checkpoint(checkpoint)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    return TrainedRun(run_dir.name, model.eval(), data, config)


def untrained_run(overrides: str) -> TrainedRun:
    """The model ``mixerlab train <overrides>`` would start from: the config composed and
    checked, the weights those of its seed's initialisation; ValueError for a bad config."""
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException

    from mixerlab.experiments.cli._train_errors import PREFIX, composition_error_message
    from mixerlab.experiments.run.schema import validate_config

    try:
        with initialize_config_module(config_module="mixerlab.conf", version_base="1.3"):
            cfg = compose("config", overrides=shlex.split(overrides))
    except HydraException as err:
        raise ValueError(composition_error_message(err).removeprefix(PREFIX)) from None
    config = validate_config(cfg)
    if why := undrawn(config):
        raise ValueError(f"{overrides!r} trains {why}")
    data = build_datamodule(config)
    pl.seed_everything(config["seed"], workers=True, verbose=False)  # as training starts
    model = build_model(config, data)
    return TrainedRun(f"untrained: {overrides}", model.eval(), data, config)


def validation_example(data: TaskDataModule, index: int) -> Example:
    """Row ``index`` of the first validation set, its real tokens only."""
    if index < 0:
        raise ValueError(f"examples count from 0, got example {index}")
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
    raise ValueError(f"example {index} is past the validation set's {seen} examples")


def given_example(text: str, vocab_size: int) -> Example:
    """The token ids in ``text`` (separated by spaces or commas) as one example; nothing is
    scored on it."""
    try:
        ids = [int(word) for word in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"--tokens takes token ids, integers, got {text!r}") from None
    if not ids:
        raise ValueError("--tokens is empty: give the ids of at least one token")
    if wrong := [i for i in ids if not 0 <= i < vocab_size]:
        raise ValueError(
            f"--tokens: id {wrong[0]} is outside the vocabulary, 0 to {vocab_size - 1}"
        )
    tokens = torch.tensor([ids])
    return Example(tokens, torch.zeros(len(ids), dtype=torch.bool))
