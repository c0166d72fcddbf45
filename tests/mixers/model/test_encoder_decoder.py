"""The encoder-decoder (``mixers/model/encoder_decoder.py``) with every registered mixer in each
stack at tiny sizes: the source's padding changes nothing, the target stays causal, decoding
(the encoder once, a prefilled prefix, then steps) equals the forward pass, and the accounting
adds up."""

from __future__ import annotations

import pytest
import torch

from mixerlab.mixers import available_mixers, get_mixer_class
from mixerlab.mixers.model.cross_mixers import available_cross_mixers
from mixerlab.mixers.model.encoder_decoder import EncoderDecoderModel

VOCAB, D_MODEL, SOURCE, TARGET = 11, 16, 9, 7
# every registered mixer but the hybrid template, which needs a pattern of its own
MIXERS = [name for name in available_mixers() if name != "hybrid"]
ENCODERS = [name for name in MIXERS if get_mixer_class(name).supports_encoder]


def model(**kwargs) -> EncoderDecoderModel:
    torch.manual_seed(0)
    kwargs = {"max_source_len": 16, "max_target_len": 16, **kwargs}
    return EncoderDecoderModel(VOCAB, VOCAB + 2, D_MODEL, 1, 2, **kwargs).eval()


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A source (2, S) whose second row has 4 padded positions, its mask, and a target (2, T)."""
    torch.manual_seed(1)
    source = torch.randint(1, VOCAB, (2, SOURCE))
    mask = torch.ones(2, SOURCE, dtype=torch.bool)
    mask[1, -4:] = False
    return source, mask, torch.randint(1, VOCAB + 2, (2, TARGET))


def source_padding_is_inert(net: EncoderDecoderModel) -> None:
    source, mask, target = batch()
    logits = net(source, target, mask)
    assert logits.shape == (2, TARGET, VOCAB + 2)
    changed = source.clone()
    changed[1, -4:] = torch.randint(1, VOCAB, (4,))
    assert torch.allclose(net(changed, target, mask), logits, atol=1e-5)
    changed[1, 0] = (source[1, 0] % (VOCAB - 1)) + 1  # a real token does count
    assert not torch.allclose(net(changed, target, mask)[1], logits[1], atol=1e-5)


def decoding_equals_forward(net: EncoderDecoderModel) -> None:
    """Greedy generation from a 2-token prefix, then the forward pass on what it wrote: every
    generated token is the forward pass's argmax there, and the decoder's logits step by step
    (prefill, then steps) equal the forward pass's."""
    source, mask, target = batch()
    written = net.generate(source, target[:, :2], TARGET - 2, mask, temperature=0.0)
    logits = net(source, written, mask)
    assert torch.equal(written[:, 2:], logits[:, 1:-1].argmax(-1))
    if net.decoder.supports_step:
        memories = net.memories(source, mask)
        prefix, state = net.decoder.prefill(written[:, :3], memories)
        stepped = [prefix]
        for t in range(3, TARGET):
            step, state = net.decoder.step(written[:, t], state)
            stepped.append(step[:, None])
        assert torch.allclose(torch.cat(stepped, dim=1), logits, atol=1e-4)


def target_is_causal(net: EncoderDecoderModel) -> None:
    source, mask, target = batch()
    changed = target.clone()
    changed[:, 4] = (target[:, 4] % (VOCAB + 1)) + 1
    before, after = net(source, target, mask), net(source, changed, mask)
    assert torch.allclose(before[:, :4], after[:, :4], atol=1e-5)
    assert not torch.allclose(before[:, 4:], after[:, 4:], atol=1e-5)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_every_encoder_capable_mixer_encodes(encoder: str) -> None:
    net = model(encoder_mixer=encoder)
    source_padding_is_inert(net)
    decoding_equals_forward(net)


@pytest.mark.parametrize("decoder", MIXERS)
def test_every_mixer_decodes(decoder: str) -> None:
    net = model(decoder_mixer=decoder)
    source_padding_is_inert(net)
    target_is_causal(net)
    decoding_equals_forward(net)


@pytest.mark.parametrize("cross", available_cross_mixers())
def test_every_cross_mixer_reads_the_source(cross: str) -> None:
    net = model(cross_mixer=cross, decoder_mixer="rnn")
    source_padding_is_inert(net)
    decoding_equals_forward(net)


def test_the_accounting_adds_up() -> None:
    net = model()
    assert net.num_params() == net.encoder.num_params() + net.decoder.num_params()
    decoder_mixers = sum(block.mixer.state_size(TARGET) for block in net.decoder.blocks)
    keys_values = 2 * SOURCE * D_MODEL * len(net.decoder.blocks)
    assert net.state_size(TARGET, SOURCE) == decoder_mixers + keys_values
    per_source = net.encoder.flops_per_token(SOURCE) - 2 * D_MODEL * VOCAB
    making = sum(block.cross.memory_flops_per_token() for block in net.decoder.blocks)
    assert net.flops_per_source_token(SOURCE) == per_source + making
    assert net.flops_per_target_token(TARGET, SOURCE) > net.decoder.flops_per_token(TARGET, 0)


def test_shared_embeddings_are_one_table() -> None:
    torch.manual_seed(0)
    apart = EncoderDecoderModel(VOCAB, VOCAB, D_MODEL, 1, 1, max_source_len=16, max_target_len=16)
    shared = EncoderDecoderModel(
        VOCAB, VOCAB, D_MODEL, 1, 1, max_source_len=16, max_target_len=16, share_embeddings=True
    )
    assert shared.decoder.embed is shared.encoder.embed
    assert shared.decoder.head.weight is shared.encoder.embed.weight
    assert apart.num_params() - shared.num_params() == VOCAB * D_MODEL
    with pytest.raises(ValueError, match="share_embeddings needs one vocabulary, got source_vocab"):
        EncoderDecoderModel(VOCAB, VOCAB + 1, D_MODEL, share_embeddings=True)


def test_bad_combinations_are_one_message() -> None:
    with pytest.raises(ValueError, match="unknown cross-mixer 'softmax'; known cross-mixers:"):
        model(cross_mixer="softmax")
    net = model()
    target = batch()[2]
    with pytest.raises(ValueError, match="this model's blocks read an encoder: pass memories="):
        net.decoder(target)
    with pytest.raises(ValueError, match="memories need a model built with a cross_mixer"):
        net.encoder.memories(torch.zeros(2, SOURCE, D_MODEL))
    with pytest.raises(ValueError, match="this model reads an encoder: pass source_len"):
        net.decoder.flops_per_token(TARGET)
