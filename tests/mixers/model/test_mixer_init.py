"""The papers' inits as ``model.mixer_init`` choices.

``mixer_init="mamba"``: the token mixers' output projections get PyTorch's default Linear
init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (Kaiming-uniform with a = sqrt(5)), divided by
sqrt(r * n_layers), r = 1 without a channel mixer and 2 with one, and zero biases. Checked in
float64 against a draw from the same generator state, written from that formula.
``mixer_init="zoology"``: every Linear in the mixer from N(0, 0.02), as Zoology's models."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from configs import run_config

from mixerlab.mixers import SequenceModel

VOCAB, D, N_LAYERS, MAX_LEN = 50, 64, 2, 16
SSM = {  # conf/mixer/mamba.yaml's and s4d.yaml's architectures, small
    "mamba": {"selective": True, "d_state": 4, "expand": 2},
    "s4d": {"selective": False, "d_state": 8, "init": "lin"},
}


@pytest.fixture
def float64() -> Iterator[None]:
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


def build(family: str, ffn: str, mixer_init: str) -> SequenceModel:
    torch.manual_seed(0)
    return SequenceModel(
        VOCAB,
        D,
        N_LAYERS,
        mixer="ssm",
        mixer_hparams=SSM[family],
        ffn=ffn,
        max_len=MAX_LEN,
        mixer_init=mixer_init,
    )


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize(("ffn", "residuals"), [("none", 1), ("mlp", 2)])
@pytest.mark.parametrize("family", SSM)
def test_mamba_init_is_a_kaiming_uniform_draw_scaled_by_depth(
    family: str, ffn: str, residuals: int
) -> None:
    own = build(family, ffn, "own")
    # Building with "own" draws all that "mamba" draws before it re-draws the output
    # projections, block by block; the generator now stands where those draws start.
    expected = []
    for block in own.blocks:
        for linear in block.mixer.output_projections():
            bound = 1 / math.sqrt(linear.in_features)
            draw = torch.empty(linear.weight.shape).uniform_(-bound, bound)
            expected.append(draw / math.sqrt(residuals * N_LAYERS))
    model = build(family, ffn, "mamba")
    projections = [p for block in model.blocks for p in block.mixer.output_projections()]
    assert len(projections) == N_LAYERS and projections[0].weight.dtype == torch.float64
    for linear, weight in zip(projections, expected, strict=True):
        torch.testing.assert_close(linear.weight, weight, rtol=1e-12, atol=0)
        assert linear.bias is None or bool((linear.bias == 0).all())
        bound = 1 / math.sqrt(linear.in_features * residuals * N_LAYERS)
        assert linear.weight.abs().max() <= bound
        assert linear.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    # nothing else differs from the model's init with the mixers' own output projections
    rescaled = {id(p) for linear in projections for p in linear.parameters()}
    for (name, p), q in zip(model.named_parameters(), own.parameters(), strict=True):
        if id(p) not in rescaled:
            assert torch.equal(p, q), name


def test_mamba_init_std_at_mambas_sizes() -> None:
    """The docstring's numbers: Mamba's out_proj (fan_in 2 * 64) in 2 layers, std
    1/sqrt(3 * 128 * r * 2): 0.036 without a channel mixer, 0.026 with one."""
    for ffn, std in (("none", 0.036), ("mlp", 0.026)):
        weight = build("mamba", ffn, "mamba").blocks[1].mixer.layer.out_proj.weight
        assert weight.shape == (64, 128)
        assert weight.std().item() == pytest.approx(std, rel=0.05)
        assert 1 / math.sqrt(3 * 128 * (1 if ffn == "none" else 2) * 2) == pytest.approx(
            std, abs=5e-4
        )


def test_the_run_config_takes_mixer_init_mamba_with_the_mamba_preset() -> None:
    config = run_config("mixer=mamba", "model.mixer_init=mamba", "model.ffn=none")
    assert config["model"]["mixer_init"] == "mamba"
    assert (config["mixer"]["name"], config["mixer"]["label"]) == ("ssm", "mamba")
    assert run_config("mixer=s4d")["mixer"]["label"] == "s4d"


@pytest.mark.parametrize("mixer", ["hyena", "base_conv", "attention"])
def test_zoology_init_draws_every_linear_in_the_mixer_from_gpt2s_normal(mixer: str) -> None:
    """``mixer_init="zoology"``: as Zoology's _init_weights for Transformer blocks, every Linear
    inside the token mixer (filter MLPs, projections) is N(0, 0.02) with zero biases, and the
    output projections N(0, 0.02 / sqrt(2 n_layers)); everything else keeps the mixer's init."""
    hparams = {"kernel_size": -1} if mixer == "base_conv" else {}
    kwargs = dict(mixer=mixer, mixer_hparams=hparams, max_len=64, n_layers=4)
    torch.manual_seed(0)
    own = SequenceModel(VOCAB, 128, mixer_init="own", **kwargs)
    torch.manual_seed(0)
    model = SequenceModel(VOCAB, 128, mixer_init="zoology", **kwargs)
    outputs = {id(linear) for block in model.blocks for linear in block.mixer.output_projections()}
    inner = [
        module
        for block in model.blocks
        for module in block.mixer.modules()
        if isinstance(module, torch.nn.Linear) and id(module) not in outputs
    ]
    assert inner, f"{mixer} has no Linear besides its output projections"
    weights = torch.cat([linear.weight.flatten() for linear in inner])
    assert weights.std().item() == pytest.approx(0.02, rel=0.1)
    assert all(linear.bias is None or not linear.bias.any() for linear in inner)
    if outputs:
        out = torch.cat(
            [p.weight.flatten() for b in model.blocks for p in b.mixer.output_projections()]
        )
        assert out.std().item() == pytest.approx(0.02 / math.sqrt(2 * 4), rel=0.1)
    linear_params = {
        id(p) for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()
    }
    for (name, p), q in zip(model.named_parameters(), own.parameters(), strict=True):
        if id(p) not in linear_params:
            assert torch.equal(p, q), name  # convolution taps, decays, norms: the mixer's own
