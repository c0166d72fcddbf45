"""hybrid: different mixers in different layers, a registered mixer like any other.

Built on its own, a hybrid stacks its pattern once (each entry in a pre-norm residual), so the
contract suite (causality, padding, step = forward, state size, ...) runs on every hybrid preset
shipped in conf/mixer/. In a model it spreads its pattern over the layers, built through the
registry by name like any mixer; its config names the run and checks every entry.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import pytest
import torch
import yaml
from configs import conf_options, run_config

from mixerlab.experiments.run.mixer_node import HYBRID, mixer_label, model_mixer
from mixerlab.mixers import SequenceModel, available_mixers, build_mixer
from mixerlab.mixers.testing import check_mixer


def _preset(option: str) -> dict[str, Any]:
    """A conf/mixer option's YAML, read without composing."""
    return yaml.safe_load((files("mixerlab.conf") / "mixer" / f"{option}.yaml").read_text())


PRESETS = [option for option in conf_options("mixer") if _preset(option)["name"] == HYBRID]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_hybrid_preset_passes_the_mixer_contract(preset: str) -> None:
    depth = len(_preset(preset)["pattern"])  # a depth the pattern divides
    name, hparams = model_mixer(run_config(f"mixer={preset}", f"model.n_layers={depth}")["mixer"])
    assert name == HYBRID
    report = check_mixer(name, hparams=hparams, d_model=16, max_len=12, perturb=0.05)
    assert not report.failures
    assert any(o.check == "state_size" and o.outcome == "passed" for o in report.outcomes)
    assert any(o.check == "step" and o.outcome == "passed" for o in report.outcomes)
    assert any(o.check == "prefill" and o.outcome == "passed" for o in report.outcomes)


def test_a_hybrid_is_built_through_the_registry_like_any_mixer() -> None:
    """Registered by name: built on its own it holds its entries; in a model, by name or as a
    list of entries, each layer gets one entry's mixer, drawn in the same order."""
    assert HYBRID in available_mixers()
    alone = build_mixer(HYBRID, 16, max_len=8, pattern=["conv", {"name": "rnn", "cell": "gru"}])
    assert [type(layer).registry_name for layer in alone.layers] == ["conv", "rnn"]
    pattern = ["conv", {"name": "attention", "n_heads": 2}]
    models = []
    for mixer, hparams in ((HYBRID, {"pattern": pattern}), (pattern, None)):
        torch.manual_seed(0)
        models.append(SequenceModel(11, 16, 4, mixer=mixer, mixer_hparams=hparams, max_len=8))
    by_name, by_list = (model.state_dict() for model in models)
    assert by_name.keys() == by_list.keys()
    assert all(torch.equal(by_name[key], by_list[key]) for key in by_name)
    with pytest.raises(ValueError, match=r"mixer 'hybrid' got unknown hyper-parameter\(s\) patern"):
        SequenceModel(11, 16, 2, mixer=HYBRID, mixer_hparams={"patern": pattern}, max_len=8)


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


def test_the_config_names_the_hybrid_and_checks_every_entry() -> None:
    config = run_config("mixer=hybrid", "mixer.pattern=[conv,{name:attention,n_heads:2}]")
    assert mixer_label(config["mixer"]) == "conv+attention"
    assert mixer_label({**config["mixer"], "label": "mine"}) == "mine"
    with pytest.raises(ValueError, match=r"mixer.pattern\[1\].n_head is not a known key"):
        run_config("mixer=hybrid", "mixer.pattern=[conv,{name:attention,n_head:2}]")
    with pytest.raises(ValueError, match="not a multiple of the hybrid pattern's 2 entries"):
        run_config("mixer=hybrid", "model.n_layers=3")
