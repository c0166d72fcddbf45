"""Hybrid models: a per-layer pattern of registered mixers, from the model to the config.

The contract checks are written for one mixer; a hybrid stack of pre-norm residual layers is
wrapped as a TokenMixer here, so the same suite (causality, padding, step = forward, state size,
...) runs on every hybrid preset shipped in conf/mixer/.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import pytest
import torch
import yaml
from torch import Tensor, nn

from mixerlab.experiments.mixer_config import HYBRID, mixer_label, model_mixer
from mixerlab.mixers import SequenceModel, TokenMixer
from mixerlab.mixers.hybrid import build_layers, layer_plan
from mixerlab.mixers.testing import check_mixer
from tests.configs import conf_options, run_config


def _preset(option: str) -> dict[str, Any]:
    """A conf/mixer option's YAML, read without composing."""
    return yaml.safe_load((files("mixerlab.conf") / "mixer" / f"{option}.yaml").read_text())


PRESETS = [option for option in conf_options("mixer") if _preset(option)["name"] == HYBRID]


def _stack_class(pattern: list[Any]) -> type[TokenMixer]:
    """The pattern's layers as one TokenMixer: x + layer(norm(x)) per layer, as a Block does."""

    class HybridStack(TokenMixer):
        """A hybrid pattern's layers, stacked, for the contract checks."""

        supports_step = True

        def __init__(self, d_model: int, *, causal: bool = True, max_len: int | None = None):
            super().__init__(d_model, causal=causal, max_len=max_len)
            self.layers = nn.ModuleList(
                build_layers(pattern, None, len(pattern), d_model, causal=causal, max_len=max_len)
            )
            self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in self.layers)
            self.supports_step = all(layer.supports_step for layer in self.layers)

        def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
            self.check_input(x, mask)
            for norm, layer in zip(self.norms, self.layers, strict=True):
                x = x + layer(norm(x), mask)
            return x

        def init_state(self, batch_size: int) -> list[Any]:
            return [layer.init_state(batch_size) for layer in self.layers]

        def prefill(self, x: Tensor) -> tuple[Tensor, list[Any]]:
            self.check_prefill(x)
            state = []
            for norm, layer in zip(self.norms, self.layers, strict=True):
                y, layer_state = layer.prefill(norm(x))
                x = x + y
                state.append(layer_state)
            return x, state

        def step(self, x_t: Tensor, state: list[Any]) -> tuple[Tensor, list[Any]]:
            new_state = []
            for norm, layer, layer_state in zip(self.norms, self.layers, state, strict=True):
                y, layer_state = layer.step(norm(x_t), layer_state)
                x_t = x_t + y
                new_state.append(layer_state)
            return x_t, new_state

        def flops_per_token(self, seq_len: int) -> float:
            return sum(layer.flops_per_token(seq_len) for layer in self.layers)

        def state_size(self, seq_len: int) -> int | None:
            sizes = [layer.state_size(seq_len) for layer in self.layers]
            return None if None in sizes else sum(sizes)

    return HybridStack


@pytest.mark.parametrize("preset", PRESETS)
def test_every_hybrid_preset_passes_the_mixer_contract(preset: str) -> None:
    depth = len(_preset(preset)["pattern"])  # a depth the pattern divides
    pattern, _ = model_mixer(run_config(f"mixer={preset}", f"model.n_layers={depth}")["mixer"])
    report = check_mixer(_stack_class(pattern), d_model=16, max_len=12, perturb=0.05)
    assert not report.failures
    assert any(o.check == "state_size" and o.outcome == "passed" for o in report.outcomes)
    assert any(o.check == "step" and o.outcome == "passed" for o in report.outcomes)
    assert any(o.check == "prefill" and o.outcome == "passed" for o in report.outcomes)


def test_a_pattern_repeats_over_the_depth_and_each_entry_keeps_its_hyper_parameters() -> None:
    plan = layer_plan(["conv", {"name": "attention", "n_heads": 2}], None, 4)
    assert plan == [("conv", {}), ("attention", {"n_heads": 2})] * 2
    assert layer_plan("gmlp", {"d_ffn": 8}, 2) == [("gmlp", {"d_ffn": 8})] * 2


@pytest.mark.parametrize(
    ("mixer", "hparams", "n_layers", "problem"),
    [
        (["conv", "attention"], None, 3, "must divide the depth evenly"),
        ([], None, 2, "must divide the depth evenly"),
        (["conv", 3], None, 2, "pattern entry 1 is 3"),
        (["conv"], {"kernel_size": 2}, 2, "each entry carries its own"),
    ],
)
def test_a_bad_pattern_is_refused_with_the_fix(
    mixer: Any, hparams: Any, n_layers: int, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        layer_plan(mixer, hparams, n_layers)


def test_a_hybrid_model_decodes_step_by_step_like_forward_and_generates() -> None:
    torch.manual_seed(0)
    model = SequenceModel(
        11, 16, 4, mixer=["conv", {"name": "attention", "n_heads": 2}], max_len=10
    ).eval()
    assert [type(b.mixer).registry_name for b in model.blocks] == ["conv", "attention"] * 2
    tokens = torch.randint(0, 11, (2, 10))
    with torch.no_grad():
        logits = model(tokens)
        state = model.init_state(2)
        for t in range(10):
            step_logits, state = model.step(tokens[:, t], state)
            torch.testing.assert_close(step_logits, logits[:, t], atol=1e-5, rtol=1e-5)
    out = model.generate(tokens[:, :3], 5, temperature=0)
    assert out.shape == (2, 8) and torch.equal(out[:, :3], tokens[:, :3])


def test_rope_reaches_the_mixers_that_take_it_and_is_refused_when_none_does() -> None:
    model = SequenceModel(11, 16, 2, mixer=["conv", "attention"], max_len=8, pos="rope")
    assert model.blocks[1].mixer.rotary is not None and not hasattr(model.blocks[0].mixer, "rotary")
    with pytest.raises(ValueError, match="no 'rope' hyper-parameter"):
        SequenceModel(11, 16, 2, mixer=["conv", "rnn"], max_len=8, pos="rope")


def test_the_config_names_the_hybrid_and_checks_every_entry() -> None:
    config = run_config("mixer=hybrid", "mixer.pattern=[conv,{name:attention,n_heads:2}]")
    assert mixer_label(config["mixer"]) == "conv+attention"
    assert mixer_label({**config["mixer"], "label": "mine"}) == "mine"
    with pytest.raises(ValueError, match=r"mixer.pattern\[1\].n_head is not a known key"):
        run_config("mixer=hybrid", "mixer.pattern=[conv,{name:attention,n_head:2}]")
    with pytest.raises(ValueError, match="not a multiple of the hybrid pattern's 2 entries"):
        run_config("mixer=hybrid", "model.n_layers=3")
