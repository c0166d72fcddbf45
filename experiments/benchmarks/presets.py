"""The shipped mixer presets (``conf/mixer``) as a run builds them, for the checks and benchmarks
that go over every one: the GPU check and ``mixerlab bench compile``."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from mixerlab.experiments.run.mixer_node import model_mixer, pattern_entries
from mixerlab.mixers import SequenceModel


def mixer_presets() -> dict[str, tuple[str, dict[str, Any]]]:
    """Every shipped mixer preset (the plugin template aside): its registered mixer and
    hyper-parameters, resolved as a run composes them."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    folder = files("mixerlab.conf") / "mixer"
    presets = sorted(
        entry.name.removesuffix(".yaml")
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml") and entry.name != "plugin.yaml"
    )
    with initialize_config_module(config_module="mixerlab.conf", version_base="1.3"):
        nodes = {
            preset: OmegaConf.to_container(
                compose("config", overrides=[f"mixer={preset}"]).mixer, resolve=True
            )
            for preset in presets
        }
    return {preset: model_mixer(node) for preset, node in nodes.items()}


def preset_model(
    name: str, hparams: dict[str, Any], *, vocab: int, d_model: int, max_len: int
) -> SequenceModel:
    """A small language model of this mixer: two layers, or as many as a hybrid's pattern has
    (which the depth must divide)."""
    depth = max(2, len(pattern_entries({"name": name, **hparams})))
    return SequenceModel(vocab, d_model, depth, mixer=name, mixer_hparams=hparams, max_len=max_len)
