"""gmlp and the mixers built on its spatial gating unit (smlp subclasses it, aMLP is gmlp with
``attn_dim``): the contract for its variants, then the causal spatial weights, the per-token init,
groups, heads and experts, the tiny attention, FLOPs and errors."""

from __future__ import annotations

import pytest
import torch

from mixerlab.mixers import build_mixer
from mixerlab.mixers.gmlp import SpatialMix
from mixerlab.mixers.smlp import ExpertLayerNorm
from mixerlab.mixers.testing import check_mixer

D, MAX_LEN = 16, 12

VARIANTS = {
    "gmlp": ("gmlp", {}),
    "gmlp-heads": ("gmlp", {"heads": 4}),
    "amlp": ("gmlp", {"attn_dim": 8}),
    "smlp": ("smlp", {"n_experts": 4}),
}


def make(variant: str, causal: bool = True, trained: bool = True, **overrides):
    """A mixer in eval mode; ``trained`` replaces the near-zero init of W by large random weights
    so that position mixing is strong enough for the mask tests to see any leak."""
    name, hparams = VARIANTS[variant]
    torch.manual_seed(0)
    mixer = build_mixer(name, D, causal=causal, max_len=MAX_LEN, **{**hparams, **overrides})
    if trained:
        with torch.no_grad():
            mixer.spatial.weight.normal_(0.0, 0.5)
            mixer.spatial.bias.normal_(1.0, 0.5)
    return mixer.eval()


def inputs(batch: int = 2, length: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, length, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("perturb", [0.0, 0.5], ids=["init", "perturbed"])
@pytest.mark.parametrize("variant", ["gmlp", "gmlp-heads", "amlp"])  # smlp: test_smlp.py
def test_variant_meets_the_contract(variant: str, perturb: float) -> None:
    """At init W is near 0, so positions barely mix; perturbed weights make a leak visible."""
    name, hparams = VARIANTS[variant]
    atol = 1e-4 if perturb else 1e-5  # larger weights, larger rounding differences
    check_mixer(name, d_model=D, max_len=MAX_LEN, hparams=hparams, perturb=perturb, atol=atol)


@pytest.mark.parametrize("variant", VARIANTS)
def test_causal_mix_trains_only_the_lower_triangle_of_w(variant):
    """W gets a gradient from the first step (the mix is linear in W), but only where a position
    reads its past."""
    mixer = make(variant, trained=False).train()
    mixer(inputs()).pow(2).sum().backward()
    assert mixer.spatial.weight.grad.abs().sum() > 0
    upper = torch.ones(MAX_LEN, MAX_LEN, dtype=torch.bool).triu(1)
    assert (mixer.spatial.weight.grad[:, upper] == 0).all()


@pytest.mark.parametrize("variant", ["gmlp", "smlp"])
def test_init_is_a_per_token_mlp(variant):
    """W ~ 0, b = 1 at init: other positions barely move a position's output, its own input does."""
    mixer, x = make(variant, causal=False, trained=False), inputs()
    others, own = x.clone(), x.clone()
    others[:, 1:] = torch.randn_like(others[:, 1:])
    own[:, 0] = torch.randn_like(own[:, 0])
    y = mixer(x)[:, 0]
    from_others = (mixer(others)[:, 0] - y).abs().max()
    from_own = (mixer(own)[:, 0] - y).abs().max()
    assert from_others < 1e-3 * from_own


def test_spatial_mix_groups_have_their_own_weights():
    mix = SpatialMix(8, 5, groups=2, causal=True)
    with torch.no_grad():
        mix.weight[0] = torch.eye(5)
        mix.weight[1] = torch.eye(5).roll(1, dims=0).tril()  # shift by one position
        mix.bias.zero_()
    v = torch.randn(3, 5, 8)
    s = mix(v)
    torch.testing.assert_close(s[..., :4], v[..., :4])
    torch.testing.assert_close(s[:, 1:, 4:], v[:, :-1, 4:])
    torch.testing.assert_close(s[:, 0, 4:], torch.zeros(3, 4))


def test_causal_spatial_mix_ignores_upper_triangle_of_w():
    mix = SpatialMix(4, 6, causal=True)
    v = torch.randn(2, 6, 4)
    before = mix(v)
    with torch.no_grad():
        mix.weight.add_(torch.ones(6, 6).triu(1) * 5.0)
    torch.testing.assert_close(mix(v), before)


def test_shorter_inputs_use_the_leading_block_of_w():
    mixer, x = make("gmlp"), inputs(1, MAX_LEN)
    torch.testing.assert_close(mixer(x[:, :5]), mixer(x)[:, :5], atol=1e-6, rtol=0)


def test_heads_and_experts_set_the_number_of_spatial_matrices():
    assert make("gmlp").spatial.weight.shape == (1, MAX_LEN, MAX_LEN)
    assert make("gmlp-heads").spatial.weight.shape == (4, MAX_LEN, MAX_LEN)
    smlp = make("smlp", n_experts=2)
    assert smlp.spatial.weight.shape == (2, MAX_LEN, MAX_LEN)
    assert isinstance(smlp.gate_norm, ExpertLayerNorm)


def test_amlp_attention_contributes_to_the_gate():
    mixer, x = make("amlp"), inputs()
    y = mixer(x)
    with torch.no_grad():
        mixer.attn.out.weight.zero_()
        mixer.attn.out.bias.zero_()
    assert (mixer(x) - y).abs().max() > 1e-4


@pytest.mark.parametrize(
    ("name", "hparams", "match"),
    [
        ("gmlp", {"d_ffn": 33}, "even"),
        ("gmlp", {"heads": 3}, "heads"),
        ("gmlp", {"attn_dim": -1}, "attn_dim"),
    ],
)
def test_bad_hparams_raise(name, hparams, match):
    with pytest.raises(ValueError, match=match):
        build_mixer(name, D, max_len=MAX_LEN, **hparams)


@pytest.mark.parametrize("name", ["gmlp", "smlp"])
def test_max_len_is_required(name):
    with pytest.raises(ValueError, match="max_len"):
        build_mixer(name, D, max_len=None)


def test_flops_per_token():
    gmlp = build_mixer("gmlp", D, causal=True, max_len=MAX_LEN, d_ffn=32)
    projections = 2 * (D * 32 + 16 * D)
    assert gmlp.flops_per_token(8) == projections + 2 * 4 * 16  # causal: half of 8 positions
    encoder = build_mixer("gmlp", D, causal=False, max_len=MAX_LEN, d_ffn=32)
    assert encoder.flops_per_token(8) == projections + 2 * 8 * 16
    amlp = build_mixer("gmlp", D, causal=True, max_len=MAX_LEN, d_ffn=32, attn_dim=8)
    tiny = 2 * (D * 24 + 8 * 16) + 2 * 2 * 4 * 8
    assert amlp.flops_per_token(8) == gmlp.flops_per_token(8) + tiny
    smlp = build_mixer("smlp", D, causal=True, max_len=MAX_LEN, d_ffn=32, n_experts=4)
    assert smlp.flops_per_token(8) == gmlp.flops_per_token(8)  # experts add parameters, not FLOPs
