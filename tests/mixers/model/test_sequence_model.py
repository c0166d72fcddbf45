"""SequenceModel and Block: shapes, options, padding, decoding, accounting."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mixerlab.mixers import SequenceModel, available_mixers, get_mixer_class, register_mixer
from mixerlab.mixers.model.blocks import GLU, MLP

VOCAB, D, MAX_LEN = 50, 32, 16


def small_model(mixer: str = "attention", **kwargs) -> SequenceModel:
    torch.manual_seed(0)
    kwargs = {"max_len": MAX_LEN, **kwargs}
    return SequenceModel(VOCAB, D, 2, mixer=mixer, **kwargs).eval()


def tokens(batch: int = 2, length: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mixer", available_mixers())
def test_language_model_logits_shape_and_finite(mixer):
    logits = small_model(mixer)(tokens())
    assert logits.shape == (2, 10, VOCAB)
    assert torch.isfinite(logits).all()


def test_scored_positions_get_the_full_forwards_logits_and_nothing_else():
    model = small_model("conv")
    x = tokens(3, 12)
    scored = torch.zeros_like(x, dtype=torch.bool)
    scored[0, 11], scored[2, [3, 7]] = True, True
    logits = model(x, scored=scored)
    assert logits.shape == (3, VOCAB)
    torch.testing.assert_close(logits, model(x)[scored], atol=1e-6, rtol=1e-5)  # matmul order


@pytest.mark.parametrize(
    "kwargs, scored_shape",
    [({}, (3, 11)), ({"causal": False, "num_classes": 3}, (3, 12))],
)
def test_scored_is_refused_where_it_selects_nothing_it_can(kwargs, scored_shape):
    model = small_model("conv", **kwargs)
    with pytest.raises(ValueError, match="scored selects language-model positions"):
        model(tokens(3, 12), scored=torch.ones(scored_shape, dtype=torch.bool))


@pytest.mark.parametrize("mixer", available_mixers())
def test_model_is_causal(mixer):
    model = small_model(mixer)
    x = tokens(1, 12)
    changed = x.clone()
    changed[0, 8:] = (changed[0, 8:] % (VOCAB - 1)) + 1
    torch.testing.assert_close(model(x)[:, :8], model(changed)[:, :8], atol=1e-5, rtol=0)


@pytest.mark.parametrize("mixer", available_mixers())
def test_classification_pools_over_real_tokens_only(mixer):
    if not get_mixer_class(mixer).supports_encoder:
        pytest.skip(f"{mixer} is decoder-only")
    model = small_model(mixer, causal=False, num_classes=3)
    x = tokens(2, 12)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[1, 7:] = False
    x[1, 7:] = 0
    batched = model(x, mask)
    alone = model(x[1:, :7])
    assert batched.shape == (2, 3)
    torch.testing.assert_close(batched[1:], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mixer", available_mixers())
def test_step_equals_forward(mixer):
    model = small_model(mixer)
    assert model.supports_step, f"{mixer} should decode step by step"
    x = tokens(2, 9)
    full = model(x)
    state = model.init_state(2)
    for t in range(x.shape[1]):
        logits, state = model.step(x[:, t], state)
        torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=0)


def greedy_by_forward(model: SequenceModel, prompt: torch.Tensor, n: int) -> torch.Tensor:
    out = prompt
    for _ in range(n):
        out = torch.cat((out, model(out)[:, -1].argmax(-1, keepdim=True)), dim=1)
    return out


@pytest.mark.parametrize("mixer", available_mixers())
def test_generate_with_state_matches_forward_greedy(mixer):
    model = small_model(mixer)
    prompt = tokens(2, 4)
    generated = model.generate(prompt, max_new_tokens=6, temperature=0)
    assert generated.shape == (2, 10)
    assert torch.equal(generated, greedy_by_forward(model, prompt, 6))


@pytest.mark.parametrize("stepping", [True, False], ids=["prefill_and_step", "forward"])
def test_a_prefix_lm_generates_what_its_forward_reads_from_the_prompt_as_prefix(stepping):
    model = small_model(prefix_lm=True)
    for block in model.blocks if not stepping else ():
        block.mixer.supports_step = False  # generate re-runs forward instead
    prompt = tokens(2, 5)
    generated = model.generate(prompt, max_new_tokens=6, temperature=0)
    out = prompt
    for _ in range(6):  # each next token read with the prompt as the bidirectional prefix
        logits = model(out, prefix=torch.full((2,), 5))[:, -1]
        out = torch.cat((out, logits.argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(generated, out)
    plain = small_model()
    plain.load_state_dict(model.state_dict())
    assert not torch.allclose(model(out, prefix=torch.full((2,), 5)), plain(out))


def test_a_prefix_lm_ignores_padding_and_refuses_what_it_cannot_read():
    model = small_model(prefix_lm=True)
    x, prefix = tokens(2, 10), torch.tensor([4, 7])
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 8:] = False
    padded = model(x, mask, prefix=prefix)
    alone = model(x[1:, :8], prefix=prefix[1:])
    torch.testing.assert_close(padded[1, :8], alone[0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"pass prefix, a \(2,\) integer tensor .* got None"):
        model(x)
    with pytest.raises(ValueError, match=r"prefix lengths must lie in \[0, 10\]"):
        model(x, prefix=torch.tensor([4, 11]))
    with pytest.raises(ValueError, match=r"this model reads causally \(prefix_lm=False\)"):
        small_model()(x, prefix=prefix)
    with pytest.raises(ValueError, match=r"ConvMixer read only causally: build it with prefix_lm"):
        small_model("conv", prefix_lm=True)
    with pytest.raises(ValueError, match=r"needs causal=True, no num_classes"):
        small_model(prefix_lm=True, causal=False)


def test_generate_samples_within_top_k_and_respects_max_len():
    model = small_model()
    gen = torch.Generator().manual_seed(0)
    out = model.generate(tokens(3, 2), max_new_tokens=5, top_k=1, generator=gen)
    assert torch.equal(out, model.generate(tokens(3, 2), max_new_tokens=5, temperature=0))
    # 10 + 7 tokens, of which the model reads 16: the last is written, never read
    assert model.generate(tokens(1, 10), max_new_tokens=7, temperature=0).shape == (1, 17)
    with pytest.raises(ValueError, match=r"read 17 positions .* max_len 16"):
        model.generate(tokens(1, 10), max_new_tokens=8)
    with pytest.raises(ValueError, match="at least one token"):
        model.generate(tokens(1, 0), max_new_tokens=3)


def test_tied_embeddings_share_one_tensor_and_count_once():
    tied = small_model(tie_embeddings=True)
    untied = small_model(tie_embeddings=False)
    assert tied.head.weight is tied.embed.weight
    assert untied.num_params() - tied.num_params() == VOCAB * D


@pytest.mark.parametrize("pos", ["none", "learned", "sinusoidal", "rope"])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("ffn", ["mlp", "glu", "moe", "none"])
def test_options_build_and_run(pos, norm, ffn):
    model = small_model(pos=pos, norm=norm, ffn=ffn)
    assert torch.isfinite(model(tokens())).all()


def test_rope_needs_a_mixer_with_rotary_support():
    with pytest.raises(ValueError, match="no 'rope' hyper-parameter"):
        small_model("conv", pos="rope")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ffn": "moe2"}, "unknown ffn 'moe2'; choose one of: mlp, glu, moe, none"),
        ({"norm": "batchnorm"}, "unknown norm 'batchnorm'; choose one of: layernorm, rmsnorm"),
        ({"pos": "alibi"}, "unknown pos 'alibi'"),
        ({"pos": "learned", "max_len": None}, "needs max_len"),
        ({"ffn": "mlp", "ffn_hparams": {"n_experts": 2}}, "takes no ffn_hparams"),
        ({"num_classes": 1}, "num_classes must be at least 2"),
        ({"mixer": "transformer"}, "unknown mixer 'transformer'; known mixers: attention"),
        ({"readout": "first"}, "unknown readout 'first'; choose one of: per_position"),
        ({"readout": "last_state", "num_classes": 3}, "needs max_len and no num_classes"),
        ({"readout": "last_state", "max_len": None, "pos": "none"}, "needs max_len"),
    ],
)
def test_bad_options_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small_model(**kwargs)


def test_too_long_input_names_both_lengths():
    with pytest.raises(ValueError, match=r"sequence length 17 .* max_len 16"):
        small_model()(tokens(1, 17))


def test_aux_loss_collects_moe_balancing_and_is_zero_without():
    moe = small_model(ffn="moe").train()
    moe(tokens())
    assert moe.aux_loss.item() > 0
    assert moe.aux_loss.requires_grad
    plain = small_model(ffn="mlp")
    plain(tokens())
    assert plain.aux_loss.item() == 0


def test_last_state_readout_reads_every_position_from_the_last_real_ones_state():
    model = small_model(readout="last_state")
    x = tokens(2, 12)
    logits = model(x)
    assert logits.shape == (2, 12, VOCAB)
    changed = x.clone()
    changed[:, -1] = (changed[:, -1] % (VOCAB - 1)) + 1
    assert (model(changed)[:, 0] - logits[:, 0]).abs().amin() > 1e-4  # the first reads the last
    scored = torch.zeros_like(x, dtype=torch.bool)
    scored[0, 3], scored[1, [0, 11]] = True, True
    torch.testing.assert_close(model(x, scored=scored), logits[scored], atol=1e-6, rtol=1e-5)

    mask = torch.ones_like(x, dtype=torch.bool)
    mask[1, 7:] = False
    x[1, 7:] = 0
    alone = model(x[1:, :7])[0]
    torch.testing.assert_close(model(x, mask)[1, :7], alone, atol=1e-5, rtol=0)
    assert not model.supports_step
    with pytest.raises(ValueError, match="readout='per_position'"):
        model.generate(x[:, :2], 3)
    decoder = 2 * 2 * D * D  # the read-out MLP's two d x d matrices, at every position
    assert model.flops_per_token(12) == small_model().flops_per_token(12) + decoder


def test_flops_per_token_counts_head_and_grows_with_attention_length():
    model = small_model()
    assert model.flops_per_token(16) > model.flops_per_token(8) > 2 * D * VOCAB


def test_init_scales_channel_mixer_output_by_depth():
    torch.manual_seed(0)
    model = SequenceModel(VOCAB, 256, 8, mixer="attention", max_len=MAX_LEN)
    ffn = model.blocks[0].ffn
    assert isinstance(ffn, MLP)
    assert ffn.up.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert ffn.down.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert torch.all(ffn.up.bias == 0)


@pytest.mark.usefixtures("scratch_registries")
def test_model_keeps_the_mixers_own_init_but_its_output_projection():
    class ConstantConv(get_mixer_class("conv")):
        def __init__(self, d_model, **kwargs):
            super().__init__(d_model, **kwargs)
            for param in self.parameters():
                nn.init.constant_(param, 0.5)

    register_mixer("_test_constant_conv")(ConstantConv)
    own = small_model("_test_constant_conv", mixer_init="own").blocks[0]
    assert all(torch.all(p == 0.5) for p in own.mixer.parameters())
    assert own.ffn.up.weight.std().item() == pytest.approx(0.02, rel=0.1)
    scaled = small_model("_test_constant_conv").blocks[0].mixer
    out = scaled.out_proj
    assert out.weight.std().item() == pytest.approx(0.02 / math.sqrt(4), rel=0.1)
    assert torch.all(out.bias == 0)
    kept = [p for name, p in scaled.named_parameters() if not name.startswith("out_proj.")]
    assert kept and all(torch.all(p == 0.5) for p in kept)


@pytest.mark.parametrize("mixer", available_mixers())
def test_depth_scaled_init_reaches_every_mixers_output_projection(mixer):
    """Each mixer's output projection starts like the channel mixers' last Linear, so no
    residual branch is louder at init than another. Two mixers have none: a decoder LSTM (its
    hidden state is its output) and Zoology's BaseConv (conv(u) * Linear(u) + u, no output
    projection by design)."""
    torch.manual_seed(0)
    model = SequenceModel(VOCAB, 64, 8, mixer=mixer, max_len=MAX_LEN)
    projections = [p for block in model.blocks for p in block.mixer.output_projections()]
    if mixer in ("rnn", "base_conv"):
        assert projections == []
        return
    assert projections, f"{mixer} names no output projection"
    weights = torch.cat([p.weight.flatten() for p in projections])
    assert weights.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.1)
    with pytest.raises(ValueError, match="unknown mixer_init 'gpt3'; choose one of"):
        SequenceModel(VOCAB, 64, 1, mixer=mixer, max_len=MAX_LEN, mixer_init="gpt3")


@pytest.mark.usefixtures("scratch_registries")
def test_decoder_only_mixer_builds_decoders_and_refuses_encoder_models():
    conv = get_mixer_class("conv")
    register_mixer("_test_decoder_only")(type("DecoderOnly", (conv,), {"supports_encoder": False}))
    assert small_model("_test_decoder_only")(tokens()).shape == (2, 10, VOCAB)
    with pytest.raises(ValueError, match=r"^mixer '_test_decoder_only' is decoder-only .*"):
        small_model("_test_decoder_only", causal=False, num_classes=3)


def test_glu_matches_mlp_parameter_count():
    mlp, glu = MLP(64, 256), GLU(64, 256)
    mlp_params = sum(p.numel() for p in mlp.parameters())
    glu_params = sum(p.numel() for p in glu.parameters())
    assert abs(glu_params - mlp_params) / mlp_params < 0.02
