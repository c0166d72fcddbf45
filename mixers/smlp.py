"""Sparse all-MLP token mixing (Yu et al. 2022, "Efficient Language Modeling with Sparse all-MLP",
arXiv 2203.06850): the sMoE module with deterministic routing.

Our reading of the paper. An sMLP stacks dense gMLP blocks and sparse blocks; a sparse block has
two MoE modules: a *tMoE* that routes tokens to FFN experts (replacing the FFN; here the
``ffn=moe`` channel mixer, :class:`mixerlab.mixers.model.moe.MoEFeedForward`), and an *sMoE*
that routes *features* to token-mixing experts (replacing self-attention, i.e. gMLP's Spatial
Gating Unit; this module). For a hidden representation Z (T tokens x H features), in our notation:

    Z = [Z_1 | ... | Z_E]                  chunk along the feature dimension into E chunks
    Expert_i(Z_i) = W_i Z_i + b_i          W_i is (T x T): expert i mixes its chunk over tokens

Routing a feature chunk by a learned gate would look at the whole column of T tokens, i.e. at
future tokens in a decoder. The paper gives two ways out: *deterministic routing* (chunk i always
goes to expert i: no gate, no balancing loss) and *partial prediction* (route on a prefix, score
the rest). We implement deterministic routing, the one that keeps the causal contract intact.

Placed where gMLP's SGU sits, the unit reads (equation -> code):

    z = gelu(x U); u, v = split(z)                    GatedMLPMixer.forward: proj_in, chunk
    v = [v_1 | ... | v_E]                             SpatialMix(groups=n_experts): the view
    v_i <- norm_i(v_i)                                ExpertLayerNorm
    s_i = W_i[:L, :L] v_i + b_i[:L]                   SpatialMix.forward: one batched einsum
    y = (u * [s_1 | ... | s_E]) V                     GatedMLPMixer.forward: proj_out

What the paper leaves open and what we chose: the expert's normalisation (each expert normalises
its own chunk with its own statistics and gain, so expert i's input depends on chunk i alone);
keeping gMLP's multiplicative gate and in/out projections around the experts; gMLP's init
(W_i ~ 0, b_i = 1: the unit starts as a per-token MLP); the hidden width (``d_ffn``, default
2 * d_model as for gmlp). With deterministic routing the sMoE is a grouped spatial gating unit:
E times the spatial parameters of gMLP's single W at the same FLOPs. It differs from
``gmlp(heads=E)`` only by the per-expert norm, and shares its code (subclass + SpatialMix).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixerlab.mixers._contract import TokenMixer, register_mixer
from mixerlab.mixers.gmlp import GatedMLPMixer


class ExpertLayerNorm(nn.Module):
    """LayerNorm of each of ``n_experts`` equal channel chunks on the chunk's own statistics."""

    def __init__(self, width: int, n_experts: int) -> None:
        super().__init__()
        self.n_experts = n_experts
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, v: Tensor) -> Tensor:
        chunks = v.unflatten(-1, (self.n_experts, -1))
        normed = F.layer_norm(chunks, chunks.shape[-1:]).flatten(-2)
        return normed * self.weight + self.bias

    def extra_repr(self) -> str:
        return f"width={self.weight.numel()}, n_experts={self.n_experts}"


@register_mixer("smlp")
class SparseMLPMixer(GatedMLPMixer):
    """Sparse all-MLP (sMoE): feature chunks routed deterministically to token-mixing experts.

    ``n_experts`` chunks of the gate half (width ``d_ffn / 2``, divisible by ``n_experts``); expert
    i mixes chunk i over positions with its own (max_len x max_len) W_i and b_i, lower-triangular
    when causal. Pair it with ``ffn=moe`` for the paper's sparse block (sMoE + tMoE).
    Forward, padding, decoding and FLOPs are gMLP's (see :class:`GatedMLPMixer`).
    """

    def __init__(
        self,
        d_model: int,
        *,
        causal: bool = True,
        max_len: int | None = None,
        n_experts: int = 4,
        d_ffn: int | None = None,
    ) -> None:
        gate_width = (2 * d_model if d_ffn is None else d_ffn) // 2
        if n_experts <= 0 or gate_width % n_experts:
            raise ValueError(
                f"the gate width d_ffn/2 = {gate_width} must split into n_experts={n_experts} "
                "equal chunks; pick n_experts from its divisors or change d_ffn"
            )
        super().__init__(d_model, causal=causal, max_len=max_len, d_ffn=d_ffn, heads=n_experts)
        self.n_experts = n_experts
        self.gate_norm = ExpertLayerNorm(gate_width, n_experts)

    def extra_repr(self) -> str:
        return f"{TokenMixer.extra_repr(self)}, d_ffn={self.d_ffn}, n_experts={self.n_experts}"
