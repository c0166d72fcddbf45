"""The cross-mixer contract (``mixers/model/cross_mixers.py``) for every registered cross-mixer:
outputs equal the formula written out, padding in the context changes nothing, one memory serves
any number of target positions, the stated memory size is what the memory holds, the stated
FLOPs are what PyTorch's counter counts, and bad input is one clear message."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mixerlab.mixers.model.cross_mixers import (
    CrossAttention,
    LinearCrossAttention,
    available_cross_mixers,
    build_cross_mixer,
)

D_MODEL, HEADS = 16, 4
NAMES = available_cross_mixers()


def inputs(source: int = 7, target: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A target (2, T, d), a context (2, S, d) and a mask with the second row's last 3 padded."""
    torch.manual_seed(0)
    x, context = torch.randn(2, target, D_MODEL), torch.randn(2, source, D_MODEL)
    mask = torch.ones(2, source, dtype=torch.bool)
    mask[1, -3:] = False
    return x, context, mask


def written_out(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Softmax attention by hand, ``mask`` (B, 1, 1, S) True at real keys, as SDPA takes it."""
    scores = q @ k.mT / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


def heads(layer, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, ...]:
    q = layer._split(layer.q_proj(x))
    k, v = map(layer._split, layer.kv_proj(context).chunk(2, dim=-1))
    return q, k, v


def test_the_built_ins_are_registered() -> None:
    assert {"attention", "linear_attention"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_padding_in_the_context_changes_nothing(name: str) -> None:
    layer = build_cross_mixer(name, D_MODEL, n_heads=HEADS)
    x, context, mask = inputs()
    changed = context.clone()
    changed[1, -3:] = 100.0 * torch.randn(3, D_MODEL)
    assert torch.allclose(layer(x, context, mask), layer(x, changed, mask), atol=1e-6)
    # and the real positions do count: the check above could not pass by ignoring the context
    changed[1, 0] += 1.0
    assert not torch.allclose(layer(x, context, mask)[1], layer(x, changed, mask)[1], atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_one_memory_serves_each_position_as_the_whole_target(name: str) -> None:
    """Decoding: the memory made once, then one target position at a time."""
    layer = build_cross_mixer(name, D_MODEL, n_heads=HEADS)
    x, context, mask = inputs()
    memory = layer.memory(context, mask)
    steps = torch.cat([layer.read(x[:, t : t + 1], memory) for t in range(x.shape[1])], dim=1)
    assert torch.allclose(steps, layer(x, context, mask), atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_the_memory_holds_the_floats_it_states(name: str) -> None:
    layer = build_cross_mixer(name, D_MODEL, n_heads=HEADS)
    for source in (3, 11):
        _, context, _ = inputs(source=source)
        memory = layer.memory(context)
        floats = sum(t.numel() for t in memory.values()) // context.shape[0]
        assert floats == layer.memory_size(source)


@pytest.mark.parametrize("name", NAMES)
def test_the_flops_are_what_pytorch_counts(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per target token (one position read from a made memory) and per source token (making
    the memory): matmuls only, as FlopCounterMode counts them (it has no count for the CPU's
    fused attention, so softmax attention is counted written out)."""
    monkeypatch.setattr(F, "scaled_dot_product_attention", written_out)
    layer = build_cross_mixer(name, D_MODEL, n_heads=HEADS)
    source = 9
    _, context, _ = inputs(source=source, target=1)
    memory = layer.memory(context[:1])
    with FlopCounterMode(display=False) as read:
        layer.read(torch.randn(1, 1, D_MODEL), memory)
    with FlopCounterMode(display=False) as made:
        layer.memory(context[:1])
    assert read.get_total_flops() == layer.flops_per_token(source)
    assert made.get_total_flops() == source * layer.memory_flops_per_token()


def test_softmax_cross_attention_is_the_formula() -> None:
    layer = CrossAttention(D_MODEL, n_heads=HEADS)
    x, context, mask = inputs()
    q, k, v = heads(layer, x, context)
    attended = written_out(q, k, v, mask[:, None, None, :])
    expected = layer.out_proj(attended.transpose(1, 2).flatten(2))
    assert torch.allclose(layer(x, context, mask), expected, atol=1e-5)


def test_linear_cross_attention_is_the_formula() -> None:
    """sum_s phi(q_t).phi(k_s) v_s / sum_s phi(q_t).phi(k_s) over real s, pair by pair."""
    layer = LinearCrossAttention(D_MODEL, n_heads=HEADS)
    x, context, mask = inputs()
    q, k, v = heads(layer, x, context)
    scores = (F.elu(q) + 1) @ (F.elu(k) + 1).mT * mask[:, None, None, :]
    expected = layer.out_proj(
        ((scores @ v) / scores.sum(-1, keepdim=True)).transpose(1, 2).flatten(2)
    )
    assert torch.allclose(layer(x, context, mask), expected, atol=1e-5)


def test_a_linear_memory_does_not_grow_with_the_source() -> None:
    layer = LinearCrossAttention(D_MODEL, n_heads=HEADS)
    assert layer.memory_size(10) == layer.memory_size(10_000) == HEADS * 4 * 4 + D_MODEL
    assert CrossAttention(D_MODEL).memory_size(10_000) == 2 * 10_000 * D_MODEL


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: build_cross_mixer("softmax", D_MODEL), "unknown cross-mixer 'softmax'; known"),
        (
            lambda: build_cross_mixer("attention", D_MODEL, heads=2),
            "got unknown hyper-parameter(s) heads; it accepts: n_heads",
        ),
        (lambda: CrossAttention(D_MODEL, n_heads=3), "n_heads must divide d_model 16, got 3"),
    ],
)
def test_bad_construction_is_one_message(build, message: str) -> None:
    with pytest.raises(ValueError, match=None) as raised:
        build()
    assert message in str(raised.value)


@pytest.mark.parametrize("name", NAMES)
def test_bad_contexts_are_refused(name: str) -> None:
    layer = build_cross_mixer(name, D_MODEL, n_heads=HEADS)
    x, context, mask = inputs()
    mask[0] = False
    with pytest.raises(ValueError, match=r"source rows \[0\] are padding only"):
        layer(x, context, mask)
    with pytest.raises(ValueError, match=r"context must be \(batch, source length, 16\)"):
        layer(x, context[..., :8])
    with pytest.raises(ValueError, match="context_mask must be bool of shape"):
        layer(x, context, mask[:, :3])
