"""The gradient mixing map: exactly the Jacobian blocks' norms, for built-in mixers and for one
whose backward vmap cannot batch; padded rows zero; bad arguments refused."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mixerlab.mixers import SequenceModel, TokenMixer, build_mixer
from mixerlab.mixers.mixing_map import gradient_map, layer_maps
from mixerlab.mixers.testing import CHECKS


def jacobian_norms(mixer: nn.Module, x: Tensor) -> Tensor:
    """(L, L): ||d y_t / d x_s||_F from the full Jacobian of one example."""
    jacobian = torch.autograd.functional.jacobian(lambda inp: mixer(inp[None])[0], x[0])
    return jacobian.pow(2).sum(dim=(1, 3)).sqrt()  # (L, d, L, d) -> (L, L)


class OpaqueScale(torch.autograd.Function):
    """Doubles its input; its backward reads a tensor into Python (a finiteness check), which
    vmap cannot batch, so a batched backward through it fails."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return 2 * x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        if not torch.isfinite(grad).all().item():
            raise FloatingPointError("non-finite gradient")
        return 2 * grad


class OpaqueCumsum(TokenMixer):
    def __init__(self, d_model: int, *, causal: bool = True, max_len: int | None = None) -> None:
        super().__init__(d_model, causal=causal, max_len=max_len)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return OpaqueScale.apply(self.proj(x)).cumsum(1)


@pytest.mark.parametrize("name", ["attention", "rnn", "conv", "ssm"])
def test_the_exact_map_is_the_jacobian_blocks_norms(name: str) -> None:
    torch.manual_seed(0)
    mixer = build_mixer(name, 8, causal=True, max_len=16).eval()
    x = torch.randn(1, 6, 8)
    expected = jacobian_norms(mixer, x)
    assert torch.allclose(gradient_map(mixer, x, probes=None)[0], expected, atol=1e-5)


def test_a_backward_vmap_cannot_batch_runs_one_pass_at_a_time() -> None:
    torch.manual_seed(0)
    mixer = OpaqueCumsum(8)
    x = torch.randn(1, 5, 8)
    with pytest.raises(RuntimeError):  # what makes gradient_map fall back
        torch.autograd.grad(
            mixer(x.requires_grad_()), x, torch.ones(2, 1, 5, 8), is_grads_batched=True
        )
    assert torch.allclose(gradient_map(mixer, x, probes=None)[0], jacobian_norms(mixer, x))


def test_padded_rows_are_zero_and_the_estimate_is_seeded() -> None:
    torch.manual_seed(0)
    mixer = build_mixer("attention", 8, causal=False, max_len=16).eval()
    x, mask = torch.randn(2, 6, 8), torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    first = gradient_map(mixer, x, mask, generator=torch.Generator().manual_seed(1))
    again = gradient_map(mixer, x, mask, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and first.shape == (2, 6, 6)
    assert first[1, 4:].abs().max() == 0 and first[1, :4, :4].min() > 0


def test_probes_must_be_positive() -> None:
    mixer = build_mixer("conv", 8, causal=True)
    with pytest.raises(ValueError, match="probes must be a positive number"):
        gradient_map(mixer, torch.randn(1, 4, 8), probes=0)


@pytest.mark.parametrize("causal", [True, False])
def test_a_sliding_windows_exact_map_is_its_band(causal: bool) -> None:
    """With a window shorter than the input (the blocked path), the map recomputes the output
    and weights no key farther than the window."""
    CHECKS["exact_map"]("sliding_window", causal=causal, hparams={"window": 3})
    mixer = build_mixer("sliding_window", 8, causal=causal, window=3).eval()
    weights = mixer.mixing_map(torch.randn(1, 10, 8)).weights[0, 0]
    gap = torch.arange(10)[:, None] - torch.arange(10)[None, :]
    read = (gap >= 0) & (gap <= 3) if causal else gap.abs() <= 3
    assert weights[~read].abs().max() == 0 and weights[read].min() > 0


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    "hparams",
    [{"kernel_size": 3, "dilation": 2}, {"kernel_size": -1}, {"kernel_size": 4, "gate": "none"}],
    ids=["dilated", "global", "ungated"],
)
def test_a_convolutions_exact_map_recomputes_it(causal: bool, hparams: dict) -> None:
    """The Toeplitz map of short, dilated and global (FFT) kernels, both modes."""
    CHECKS["exact_map"]("conv", causal=causal, hparams=hparams)


@pytest.mark.parametrize("causal", [True, False])
def test_gmlps_map_is_its_spatial_matrix_per_head_and_amlp_has_none(causal: bool) -> None:
    CHECKS["exact_map"]("gmlp", causal=causal, hparams={"heads": 2}, perturb=0.5)
    amlp = build_mixer("gmlp", 8, causal=causal, max_len=16, attn_dim=4)
    assert amlp.mixing_map(torch.randn(1, 6, 8)) is None


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    "hparams",
    [{"selective": True, "d_state": 4}, {"selective": False, "d_state": 8, "init": "lin"}],
    ids=["mamba", "s4d"],
)
def test_a_state_space_models_exact_map_recomputes_it(causal: bool, hparams: dict) -> None:
    """Mamba's scan as a matrix (both directions for an encoder) and S4D's kernel."""
    CHECKS["exact_map"]("ssm", causal=causal, hparams=hparams)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    "hparams",
    [
        {"decay": "gated", "normalize": "rms", "output_gate": "swish"},  # GLA
        {"decay": "fixed", "normalize": "group", "output_gate": "swish"},  # RetNet
        {"feature_map": "taylor", "feature_dim": 4, "decay": "none", "normalize": "sum"},  # Based
        {"feature_map": "elu", "decay": "gated", "normalize": "sum"},
    ],
    ids=["gla", "retnet", "based", "elu-gated"],
)
def test_a_linear_attentions_exact_map_recomputes_it(causal: bool, hparams: dict) -> None:
    CHECKS["exact_map"]("linear_attention", causal=causal, hparams={"chunk_size": 4, **hparams})


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("order", [2, 3])
def test_hyenas_exact_map_is_its_data_controlled_product(causal: bool, order: int) -> None:
    CHECKS["exact_map"]("hyena", causal=causal, hparams={"order": order})


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    "hparams",
    [
        {"kernel_size": 3},
        {"kernel_size": 4},
        {"kernel_size": -1},
        {"kernel_size": -1, "implicit": False},
    ],
    ids=["short", "short-even", "implicit", "explicit"],
)
def test_base_convs_exact_map_recomputes_it(causal: bool, hparams: dict) -> None:
    CHECKS["exact_map"]("base_conv", causal=causal, hparams=hparams)


def test_layer_maps_give_each_layers_map_at_the_input_it_sees() -> None:
    """A hybrid model: attention's exact map in layer 0, the LSTM's gradient map in layer 1,
    each at its own input; the model's mode comes back."""
    torch.manual_seed(0)
    pattern = [{"name": "attention", "n_heads": 2}, {"name": "rnn"}]
    model = SequenceModel(20, 16, 2, mixer="hybrid", mixer_hparams={"pattern": pattern})
    model.train()
    tokens = torch.randint(1, 20, (1, 7))
    first, second = layer_maps(model, tokens, probes=None)
    assert (first.groups, first.exact, tuple(first.weights.shape)) == ("heads", True, (2, 7, 7))
    assert (second.groups, second.exact, tuple(second.weights.shape)) == (
        "gradient",
        True,
        (1, 7, 7),
    )
    assert torch.allclose(first.weights.sum(-1), torch.ones(2, 7))  # softmax rows
    assert second.weights.triu(1).abs().max() == 0 and model.training
    forced = layer_maps(model, tokens, gradient=True, probes=None)[0]
    assert forced.groups == "gradient" and forced.weights.shape == (1, 7, 7)
    with pytest.raises(ValueError, match=r"one example: tokens of shape \(1, L\)"):
        layer_maps(model, torch.randint(1, 20, (2, 7)))


def test_layer_maps_map_the_layers_asked_for_and_refuse_others() -> None:
    torch.manual_seed(0)
    model = SequenceModel(20, 16, 3, mixer="attention", mixer_hparams={"n_heads": 2})
    tokens = torch.randint(1, 20, (1, 7))
    everything = layer_maps(model, tokens)
    (second,) = layer_maps(model, tokens, layers=[1])
    assert second.layer == 1 and torch.equal(second.weights, everything[1].weights)
    with pytest.raises(ValueError, match="layer 3 is out of range: the model has 3 layers, 0 to 2"):
        layer_maps(model, tokens, layers=[0, 3])
