"""The MoE channel mixer (``ffn=moe``): switch routing against a per-token reference, the
balancing loss, expert capacity and dropped tokens, padding, gradients, FLOPs and errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mixerlab.mixers.model.moe import MoEFeedForward

D = 16


def inputs(batch: int = 2, length: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, length, D, generator=torch.Generator().manual_seed(seed))


def make_moe(**kwargs) -> MoEFeedForward:
    torch.manual_seed(0)
    return MoEFeedForward(D, 32, **{"n_experts": 4, **kwargs})


def route_everything_to_expert_zero(moe: MoEFeedForward) -> None:
    """With positive inputs, expert 0's logit is large and the others are 0."""
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 1.0


def positive_tokens(batch: int = 2, length: int = 8) -> torch.Tensor:
    return inputs(batch, length).abs() + 0.5


def reference_moe(moe: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """Token by token: p_e * MLP_e(x) for the top-1 expert e (no capacity)."""
    rows = []
    for token in x.reshape(-1, D):
        probs = F.softmax(moe.router(token), dim=-1)
        e = int(probs.argmax())
        hidden = F.gelu(token @ moe.w_in[e] + moe.b_in[e, 0])
        rows.append(probs[e] * (hidden @ moe.w_out[e] + moe.b_out[e, 0]))
    return torch.stack(rows).view_as(x)


def test_moe_matches_per_token_reference():
    moe, x = make_moe().eval(), inputs()
    with torch.no_grad():
        moe.router.weight.normal_(0.0, 1.0)  # spread tokens over several experts
    torch.testing.assert_close(moe(x), reference_moe(moe, x), atol=1e-6, rtol=1e-5)


def test_moe_aux_loss_is_weight_for_uniform_router_and_n_times_for_collapse():
    moe = make_moe(aux_loss_weight=0.01)
    with torch.no_grad():
        moe.router.weight.zero_()  # p_i = 1/n for every token
    moe(inputs())
    assert math.isclose(moe.aux_loss.item(), 0.01, rel_tol=1e-5)
    route_everything_to_expert_zero(moe)
    moe(positive_tokens())
    assert math.isclose(moe.aux_loss.item(), 0.01 * 4, rel_tol=1e-3)  # f_0 = p_0 = 1


def test_moe_capacity_drops_overflow_and_counts_it():
    moe = make_moe(capacity_factor=1.0).train()
    route_everything_to_expert_zero(moe)
    x = positive_tokens(2, 8)  # 16 tokens, capacity ceil(16 / 4) = 4 per expert
    y = moe(x).view(-1, D)
    assert moe.last_dropped_fraction == pytest.approx(12 / 16)
    assert (y[:4].abs().sum(dim=-1) > 0).all()  # first come, first served
    assert (y[4:] == 0).all()


def test_moe_eval_has_no_capacity_limit_and_is_batch_independent():
    moe = make_moe(capacity_factor=1.0).eval()
    route_everything_to_expert_zero(moe)
    x = positive_tokens(2, 8)
    y = moe(x)
    assert moe.last_dropped_fraction == 0.0
    assert (y.abs().sum(dim=-1) > 0).all()
    torch.testing.assert_close(y[1:], moe(x[1:]), atol=1e-6, rtol=0)


def test_moe_masked_tokens_are_not_routed():
    moe = make_moe(capacity_factor=1.0).train()
    x = inputs(2, 8)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 3:] = False
    y = moe(x, mask)
    assert (y[1, 3:] == 0).all()
    aux, dropped = moe.aux_loss, moe.last_dropped_fraction
    # Same statistics as the real tokens alone: padding takes no capacity, no part in the loss.
    real = torch.cat((x[0], x[1, :3]))[None]
    torch.testing.assert_close(y[mask][None], moe(real), atol=1e-6, rtol=0)
    torch.testing.assert_close(aux, moe.aux_loss)
    assert dropped == moe.last_dropped_fraction

    moe(x, torch.zeros(2, 8, dtype=torch.bool))  # no real token at all
    assert moe.aux_loss.item() == 0.0


def test_moe_gradient_reaches_router_through_the_gate():
    moe = make_moe(aux_loss_weight=0.0).train()
    moe(inputs()).pow(2).sum().backward()
    for name, p in moe.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_moe_flops_and_bad_arguments():
    assert make_moe().flops_per_token() == 2 * (D * 4 + 2 * D * 32)
    with pytest.raises(ValueError, match="capacity_factor"):
        MoEFeedForward(D, 32, capacity_factor=0.0)
    with pytest.raises(ValueError, match="mask"):
        make_moe()(inputs(), torch.ones(2, 9, dtype=torch.bool))
