"""gMLP (Liu et al. 2021, "Pay Attention to MLPs", arXiv 2105.08050): an MLP with spatial gating.

The gMLP unit is a per-token MLP whose hidden layer is gated by a linear mix over positions:

    z = gelu(x U)                          d_model -> d_ffn
    u, v = split(z)                        two halves of width d_ffn / 2 (the gate width)
    s = W[:L, :L] norm(v) + b[:L]          Spatial Gating Unit (SGU); W is (max_len, max_len)
    y = (u * s) V                          d_ffn / 2 -> d_model

W starts near zero and b at one, so at init s ~= 1 and the unit is the plain per-token MLP u V;
training grows the position mixing from there (the paper's init, section 2.1). aMLP (section 4.3)
adds a tiny single-head attention computed from x to s before the product.

:class:`SpatialMix` (the W, b part: causal mask, slicing to L, padding, decoding) is shared with
the sparse all-MLP mixer in :mod:`mixerlab.mixers.smlp`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixerlab.mixers._contract import TokenMixer, register_mixer
from mixerlab.mixers.attention import allowed_keys
from mixerlab.mixers.mixing_map import MixingMap


class SpatialMix(nn.Module):
    """``s = W[:L, :L] v + b[:L]``: a learned (max_len x max_len) position mix per channel group.

    ``v`` (B, L, width) is split into ``groups`` equal channel groups, each with its own W and b
    (gMLP's multi-head SGU; smlp's experts). Causal: W is made lower-triangular once per forward,
    on the weight, so one batched matmul does the whole mix. Padded positions are zeroed in ``v``
    first, so real outputs neither see their content nor their count.
    """

    def __init__(
        self,
        width: int,
        max_len: int,
        *,
        groups: int = 1,
        causal: bool = True,
        init_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        if groups <= 0 or width % groups:
            raise ValueError(f"width {width} must split into {groups} equal channel groups")
        self.width = width
        self.groups = groups
        self.causal = causal
        # The paper's init: W ~ U(-eps, eps) with eps = 1e-3 / max_len, b = 1, so s ~= 1.
        eps = init_eps / max_len
        self.weight = nn.Parameter(torch.empty(groups, max_len, max_len).uniform_(-eps, eps))
        self.bias = nn.Parameter(torch.ones(groups, max_len))

    def forward(self, v: Tensor, mask: Tensor | None = None) -> Tensor:
        batch, length, _ = v.shape
        if mask is not None:
            v = v.masked_fill(~mask[..., None], 0.0)  # NaN or inf padding cannot leak either
        weight = self.weight[:, :length, :length]
        if self.causal:
            weight = weight.tril()
        v = v.view(batch, length, self.groups, -1)
        s = torch.einsum("gmn,bngc->bmgc", weight, v) + self.bias[:, :length].T[:, :, None]
        return s.reshape(batch, length, self.width)

    def step(self, v_t: Tensor, history: Tensor) -> tuple[Tensor, Tensor]:
        """Position t = len(history): ``s_t = W[t, :t+1] v[:t+1] + b[t]``; returns s_t, history."""
        history = torch.cat((history, v_t[:, None]), dim=1)
        batch, seen, _ = history.shape
        t = seen - 1
        past = history.view(batch, seen, self.groups, -1)
        s = torch.einsum("gn,bngc->bgc", self.weight[:, t, :seen], past) + self.bias[:, t, None]
        return s.reshape(batch, self.width), history

    def flops_per_token(self, seq_len: int) -> float:
        """One multiply-add per (mixed position, channel); a causal token mixes ~seq_len/2."""
        mixed = seq_len / 2 if self.causal else seq_len
        return 2.0 * mixed * self.width

    def extra_repr(self) -> str:
        return f"width={self.width}, max_len={self.weight.shape[-1]}, groups={self.groups}"


class TinyAttention(nn.Module):
    """aMLP's tiny single-head attention of width ``attn_dim``, projected to ``d_out`` channels."""

    def __init__(self, d_model: int, attn_dim: int, d_out: int, *, causal: bool = True) -> None:
        super().__init__()
        self.causal = causal
        self.qkv = nn.Linear(d_model, 3 * attn_dim)
        self.out = nn.Linear(attn_dim, d_out)

    def forward(
        self, x: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Output (B, L, d_out) and the keys and values (B, 1, L, attn_dim): a decoder's cache."""
        q, k, v = self.qkv(x)[:, None].chunk(3, dim=-1)  # (B, 1, L, attn_dim) each
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:
            allowed = allowed_keys(x.shape[1], causal=self.causal, mask=mask)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.out(y[:, 0]), (k, v)

    def step(
        self, x_t: Tensor, cache: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Attend from ``x_t`` (B, d_model) to the cached keys/values and itself."""
        q, k, v = self.qkv(x_t)[:, None, None].chunk(3, dim=-1)
        k, v = torch.cat((cache[0], k), dim=2), torch.cat((cache[1], v), dim=2)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y[:, 0, 0]), (k, v)


@register_mixer("gmlp")
class GatedMLPMixer(TokenMixer):
    """gMLP: a per-token MLP gated by a learned position-to-position mix (aMLP with attn_dim > 0).

    Hyper-parameters:

    - ``d_ffn`` (even): hidden width of the unit; the gate half is ``d_ffn / 2``. Default
      ``2 * d_model``: here the unit sits in a block that already has a channel mixer (FFN), so
      its projections (3 d_model^2) plus one (max_len x max_len) W come close to attention's
      4 d_model^2 parameters. The paper's standalone gMLP (no FFN) uses ``6 * d_model``.
    - ``heads``: independent W and b per channel group of the gate half (gate width divisible).
    - ``attn_dim``: 0 is plain gMLP; > 0 adds aMLP's single-head attention of that size, computed
      from the unit's input and added to the spatial gating output before the product.

    Learns one weight per pair of positions, so it needs ``max_len``; shorter inputs use
    ``W[:L, :L]`` and ``b[:L]``. Decoding keeps the past normalised gate inputs (and the tiny
    attention's keys and values).
    """

    supports_step = True
    requires_max_len = True

    def __init__(
        self,
        d_model: int,
        *,
        causal: bool = True,
        max_len: int | None = None,
        d_ffn: int | None = None,
        heads: int = 1,
        attn_dim: int = 0,
    ) -> None:
        super().__init__(d_model, causal=causal, max_len=max_len)
        d_ffn = 2 * d_model if d_ffn is None else d_ffn
        if d_ffn <= 0 or d_ffn % 2:
            raise ValueError(f"d_ffn must be a positive even number (u and v halves), got {d_ffn}")
        gate_width = d_ffn // 2
        if heads <= 0 or gate_width % heads:
            raise ValueError(
                f"the gate width d_ffn/2 = {gate_width} must be divisible by heads {heads}; "
                "pick heads from its divisors or change d_ffn"
            )
        if attn_dim < 0:
            raise ValueError(f"attn_dim must be 0 (plain gMLP) or positive (aMLP), got {attn_dim}")
        self.d_ffn = d_ffn
        self.heads = heads
        self.attn_dim = attn_dim
        self.proj_in = nn.Linear(d_model, d_ffn)
        self.gate_norm: nn.Module = nn.LayerNorm(gate_width)
        self.spatial = SpatialMix(gate_width, max_len, groups=heads, causal=causal)
        self.attn = (
            TinyAttention(d_model, attn_dim, gate_width, causal=causal) if attn_dim else None
        )
        self.proj_out = nn.Linear(gate_width, d_model)

    def _unit(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, dict[str, Any]]:
        """The unit on x (B, L, d): its output and what a decoder keeps of x, the normalised gate
        inputs (B, L, d_ffn/2) and, for aMLP, the tiny attention's keys and values."""
        u, v = F.gelu(self.proj_in(x)).chunk(2, dim=-1)
        history: dict[str, Any] = {"gate": self.gate_norm(v)}
        s = self.spatial(history["gate"], mask)
        if self.attn is not None:
            a, history["kv"] = self.attn(x, mask)
            s = s + a
        return self.proj_out(u * s), history

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        self.check_input(x, mask)
        return self._unit(x, mask)[0]

    def mixing_map(self, x: Tensor, mask: Tensor | None = None) -> MixingMap | None:
        """gMLP's spatial matrix per head, ``W[:L, :L]`` (lower-triangular if causal), over the
        normalised gate inputs; the spatial bias, the product with u and proj_out are
        ``finish``. aMLP (attn_dim > 0) adds attention to the same gate: no single map, None."""
        self.check_input(x, mask)
        if self.attn is not None:
            return None
        batch, length, _ = x.shape
        u, v = F.gelu(self.proj_in(x)).chunk(2, dim=-1)
        gate = self.gate_norm(v)
        if mask is not None:
            gate = gate.masked_fill(~mask[..., None], 0.0)
        spatial = self.spatial
        weights = spatial.weight[:, :length, :length]
        weights = (weights.tril() if self.causal else weights).expand(batch, -1, -1, -1)
        values = gate.view(batch, length, spatial.groups, -1).transpose(1, 2)  # (B, H, L, C)

        def finish(mixed: Tensor) -> Tensor:
            biased = mixed + spatial.bias[None, :, :length, None]  # (B, H, L, C)
            return self.proj_out(u * biased.transpose(1, 2).reshape(batch, length, -1))

        if mask is not None:
            weights = weights * mask[:, None, None, :]
        return MixingMap(weights, values, finish, "heads")

    def prefill(self, x: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """One forward over the prompt; the gate inputs it normalised are the state."""
        self.check_prefill(x)
        y, history = self._unit(x, None)
        return y, {"position": x.shape[1], **history}

    def init_state(self, batch_size: int) -> dict[str, Any]:
        """No past yet: empty gate history (B, 0, d_ffn/2) and, for aMLP, an empty KV cache."""
        weight = self.proj_in.weight
        state: dict[str, Any] = {
            "position": 0,
            "gate": weight.new_zeros(batch_size, 0, self.spatial.width),
        }
        if self.attn is not None:
            empty = weight.new_zeros(batch_size, 1, 0, self.attn_dim)
            state["kv"] = (empty, empty)
        return state

    def step(self, x_t: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """``y_t = V(u_t * (W[t, :t+1] v[:t+1] + b[t] (+ attn)))``, equal to ``forward`` at t."""
        position = state["position"]
        self.check_step(position)
        u, v = F.gelu(self.proj_in(x_t)).chunk(2, dim=-1)
        s, gate = self.spatial.step(self.gate_norm(v), state["gate"])
        new_state: dict[str, Any] = {"position": position + 1, "gate": gate}
        if self.attn is not None:
            a, new_state["kv"] = self.attn.step(x_t, state["kv"])
            s = s + a
        return self.proj_out(u * s), new_state

    def output_projections(self) -> list[nn.Linear]:
        return [self.proj_out]

    def flops_per_token(self, seq_len: int) -> float:
        """In/out projections, the spatial mix, and (aMLP) the tiny attention.

        The tiny attention costs its q, k, v and output projections plus scores and weighted sum
        over the attended keys (about seq_len / 2 of them when causal).
        """
        gate_width = self.spatial.width
        flops = 2.0 * (self.d_model * self.d_ffn + gate_width * self.d_model)
        flops += self.spatial.flops_per_token(seq_len)
        if self.attn is not None:
            attended = seq_len / 2 if self.causal else seq_len
            flops += 2.0 * (self.d_model * 3 * self.attn_dim + self.attn_dim * gate_width)
            flops += 2.0 * 2 * attended * self.attn_dim
        return flops

    def state_size(self, seq_len: int) -> int:
        """The gate inputs of every past position (the spatial mix reads them all) and, for aMLP,
        the tiny attention's keys and values: both grow with the length."""
        kv = 2 * self.attn_dim if self.attn is not None else 0
        return seq_len * (self.spatial.width + kv)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, d_ffn={self.d_ffn}, heads={self.heads}, "
            f"attn_dim={self.attn_dim}"
        )
