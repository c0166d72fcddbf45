"""What the config tests share: the options of a shipped config group, and the config of a run
composed from command-line style overrides, as ``mixerlab train`` composes and checks it."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from mixerlab.experiments.run.schema import validate_config

# The smallest real training run: a few CPU steps of a one-layer model on a sliver of the corpus.
TINY = [
    "debug=default",
    "model.d_model=32",
    "model.n_layers=1",
    "task.datamodule.seq_len=32",
    "task.datamodule.batch_size=4",
    "task.datamodule.max_train_tokens=4096",
    "callbacks.progress_bar=false",
]


def conf_options(group: str) -> list[str]:
    """The options of a config group shipped in the ``conf`` package (none for a missing one)."""
    folder = files("mixerlab.conf") / group
    if not folder.is_dir():
        return []
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def compose_config(*overrides: str, hydra: bool = False) -> DictConfig:
    """The composed config; ``hydra=True`` keeps the ``hydra`` node (sweepers, launchers)."""
    with initialize_config_module(config_module="mixerlab.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def run_config(*overrides: str) -> dict[str, Any]:
    """The validated config a run with these overrides trains with."""
    return validate_config(compose_config(*overrides))
