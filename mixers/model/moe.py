"""Sparse mixture-of-experts feed-forward: the sMLP paper's tMoE, with Switch Transformer routing.

In the sparse all-MLP (Yu et al. 2022, arXiv 2203.06850) the FFN of a sparse block is a *tMoE*:
tokens are routed to one of n FFN experts, ``y = sum_i G_i(x) E_i(x)`` with a sparse gate G. The
paper assigns tokens with Base Layers' balanced assignment (a linear-assignment solve per batch);
we use Switch Transformer's top-1 routing (Fedus et al. 2021, arXiv 2101.03961) with its
load-balancing loss, which needs no solver and routes each token on its own. Equation -> code:

    p(x) = softmax(x W_r)                  self.router, softmax in fp32
    e(x) = argmax_i p_i(x)                 top-1 ("switch") routing: one expert per token
    E_i(x) = W2_i gelu(W1_i x + c1_i) + c2_i   stacked expert weights, two batched matmuls
    y(x) = p_e(x) * E_e(x)                 scaling by p_e gives the router its gradient
    aux = w * n * sum_i f_i P_i            f_i: fraction of real tokens sent to expert i,
                                           P_i: mean p_i over real tokens; = w when uniform

Padded tokens (mask False) are not routed, count towards no capacity or statistic, and output 0.

Capacity and dropped tokens (training): each expert takes at most
``C = ceil(capacity_factor * n_real_tokens / n_experts)`` tokens, first come first served in
flattened batch order (earlier sequences first, then earlier positions, so a token's fate never
depends on its own sequence's future). Tokens beyond C are dropped: their output is 0, so the
block's residual carries them through unchanged; ``last_dropped_fraction`` records the share.
In eval mode there is no capacity limit (no drops), so a token's output depends on that token
alone and eval results do not depend on the batch they are in.

Dispatch: tokens are scattered into an (n_experts, slots, d_model) buffer at (expert, rank within
the expert), the experts run as two ``baddbmm`` over the stacked weights, and outputs are gathered
back: no Python loop over tokens or experts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MoEFeedForward(nn.Module):
    """Top-1 (Switch) mixture of GELU MLP experts with a load-balancing loss and expert capacity."""

    def __init__(
        self,
        d_model: int,
        d_hidden: int,
        *,
        n_experts: int = 4,
        capacity_factor: float = 1.25,
        aux_loss_weight: float = 0.01,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if d_model <= 0 or d_hidden <= 0:
            raise ValueError(f"d_model and d_hidden must be positive, got {d_model}, {d_hidden}")
        if n_experts <= 0:
            raise ValueError(f"n_experts must be positive, got {n_experts}")
        if capacity_factor <= 0:
            raise ValueError(
                f"capacity_factor must be positive (1.0 = exactly the fair share per expert), "
                f"got {capacity_factor}"
            )
        if aux_loss_weight < 0:
            raise ValueError(f"aux_loss_weight must be >= 0, got {aux_loss_weight}")
        self.d_model = d_model
        self.d_hidden = d_hidden
        self.n_experts = n_experts
        self.capacity_factor = capacity_factor
        self.aux_loss_weight = aux_loss_weight
        self.router = nn.Linear(d_model, n_experts, bias=False)
        # Stacked expert weights, GPT-2 style init (N(0, 0.02), zero biases) like the model's FFNs.
        self.w_in = nn.Parameter(torch.randn(n_experts, d_model, d_hidden) * 0.02)
        self.b_in = nn.Parameter(torch.zeros(n_experts, 1, d_hidden))
        self.w_out = nn.Parameter(torch.randn(n_experts, d_hidden, d_model) * 0.02)
        self.b_out = nn.Parameter(torch.zeros(n_experts, 1, d_model))
        self.dropout = nn.Dropout(dropout)
        self.aux_loss: Tensor | None = None
        self.last_dropped_fraction = 0.0

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x`` (..., d_model), ``mask`` (...) bool True at real tokens -> (..., d_model)."""
        if x.shape[-1] != self.d_model:
            raise ValueError(
                f"MoEFeedForward expects x (..., {self.d_model}), got {tuple(x.shape)}"
            )
        if mask is not None and (mask.shape != x.shape[:-1] or mask.dtype != torch.bool):
            raise ValueError(
                f"mask must be a bool tensor of shape {tuple(x.shape[:-1])}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        flat = x.reshape(-1, self.d_model)
        where, tokens = torch.arange(flat.shape[0], device=x.device), flat
        if mask is not None:
            where = where[mask.reshape(-1)]
            tokens = flat[where]
        n_tokens = tokens.shape[0]
        out = flat.new_zeros(flat.shape)
        if n_tokens == 0:
            self.aux_loss = x.new_zeros(())
            self.last_dropped_fraction = 0.0
            return out.view_as(x)

        probs = F.softmax(self.router(tokens), dim=-1, dtype=torch.float32)  # (N, n_experts)
        gate, expert = probs.max(dim=-1)
        counts = torch.bincount(expert, minlength=self.n_experts)
        fraction = counts.to(probs.dtype) / n_tokens
        balance = self.n_experts * (fraction * probs.mean(dim=0)).sum()
        self.aux_loss = (self.aux_loss_weight * balance).to(x.dtype)

        # Rank of each token among the tokens routed to its expert, in flattened batch order.
        rank = (F.one_hot(expert, self.n_experts).cumsum(dim=0) - 1).gather(1, expert[:, None])
        rank = rank[:, 0]
        # One host sync sizes the expert buffer and counts the kept tokens.
        per_expert = counts.tolist()
        slots = max(per_expert)
        if self.training:
            slots = min(slots, math.ceil(self.capacity_factor * n_tokens / self.n_experts))
        n_kept = sum(min(count, slots) for count in per_expert)
        self.last_dropped_fraction = 1.0 - n_kept / n_tokens

        slot = expert * slots + rank
        if n_kept < n_tokens:  # drop the overflow (only in training: eval keeps every token)
            kept = (rank < slots).nonzero()[:, 0]
            slot, tokens, gate, where = slot[kept], tokens[kept], gate[kept], where[kept]
        buffer = tokens.new_zeros(self.n_experts * slots, self.d_model)
        buffer = buffer.index_copy(0, slot, tokens).view(self.n_experts, slots, -1)
        hidden = self.dropout(F.gelu(torch.baddbmm(self.b_in, buffer, self.w_in)))
        expert_out = torch.baddbmm(self.b_out, hidden, self.w_out).view(-1, self.d_model)
        y = expert_out[slot] * gate[:, None].to(x.dtype)
        return out.index_copy(0, where, y).view_as(x)

    def flops_per_token(self) -> float:
        """The router plus one expert (top-1): 2 (d n + 2 d d_hidden)."""
        return 2.0 * (self.d_model * self.n_experts + 2 * self.d_model * self.d_hidden)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_hidden={self.d_hidden}, n_experts={self.n_experts}, "
            f"capacity_factor={self.capacity_factor}, aux_loss_weight={self.aux_loss_weight}"
        )
