"""Cross-mixers: the layer of an encoder-decoder's decoder block that reads a second sequence.

A token mixer (``TokenMixer``) moves information between the positions of one sequence. A
cross-mixer lets each position of a target x (B, T, d) read a *context* (B, S, d), the encoder's
output, with the context's padding masked. It is not a token mixer: it takes a second sequence
and its mask, and it has no causality of its own (every target position may read the whole
context; the decoder's self-mixer keeps the target causal). Its contract:

- ``memory(context, context_mask)``: what the layer keeps of the context, computed once per
  source: softmax attention its keys and values (S x d floats), linear attention the sums
  phi(k) v^T and phi(k) (a size that does not grow with the source);
- ``read(x, memory)``: the output at any number of target positions, (B, T, d) -> (B, T, d).
  Decoding reads one position at a time from the memory made once, so a step equals the forward
  pass by construction;
- ``forward(x, context, context_mask)`` is ``read(x, memory(context, context_mask))``;
- ``memory_size(source_len)``: floats per sequence the memory holds, part of the decoding state;
- ``flops_per_token(source_len)``: forward FLOPs per target token, and
  ``memory_flops_per_token()`` those per source token of making the memory.

A context row of padding only has nothing to read, and is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixerlab.mixers._registry import Registry

ENTRY_POINT_GROUP = "mixerlab.cross_mixers"
EPS = 1e-6  # linear attention's normaliser floor


class CrossMixer(nn.Module):
    """Base class of every cross-mixer (the module docstring is the contract)."""

    registry_name: str | None = None

    def __init__(self, d_model: int) -> None:
        super().__init__()
        if d_model <= 0:
            raise ValueError(f"d_model must be positive, got {d_model}")
        self.d_model = d_model

    def memory(self, context: Tensor, context_mask: Tensor | None = None) -> Any:
        raise NotImplementedError

    def read(self, x: Tensor, memory: Any) -> Tensor:
        raise NotImplementedError

    def memory_size(self, source_len: int) -> int:
        raise NotImplementedError

    def flops_per_token(self, source_len: int) -> float:
        raise NotImplementedError

    def memory_flops_per_token(self) -> float:
        raise NotImplementedError

    def output_projections(self) -> list[nn.Linear]:
        """The Linears that write into the residual stream, which the model's ``mixer_init``
        initialises as it does a token mixer's (none by default)."""
        return []

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
        return self.read(x, self.memory(context, context_mask))

    def check_context(self, context: Tensor, context_mask: Tensor | None) -> None:
        """A (B, S, d_model) context whose mask, if any, is bool (B, S) with a real token in
        every row."""
        if context.dim() != 3 or context.shape[-1] != self.d_model:
            raise ValueError(
                f"context must be (batch, source length, {self.d_model}), got "
                f"{tuple(context.shape)}"
            )
        if context_mask is None:
            return
        if context_mask.shape != context.shape[:2] or context_mask.dtype != torch.bool:
            raise ValueError(
                f"context_mask must be bool of shape {tuple(context.shape[:2])}, got "
                f"{context_mask.dtype} {tuple(context_mask.shape)}"
            )
        if empty := (~context_mask.any(dim=1)).nonzero().flatten().tolist():
            raise ValueError(
                f"source rows {empty} are padding only: a cross-mixer has nothing to read there; "
                "give every source at least one real token"
            )


def register_cross_mixer(name: str) -> Callable[[type[CrossMixer]], type[CrossMixer]]:
    """Class decorator: make a :class:`CrossMixer` buildable as ``build_cross_mixer(name)``."""
    return CROSS_MIXERS.decorator(name)


CROSS_MIXERS: Registry[CrossMixer] = Registry(
    "cross-mixer",
    CrossMixer,
    ENTRY_POINT_GROUP,
    argument="hyper-parameter",
    adopt=lambda name, cls: register_cross_mixer(name)(cls),
)


def available_cross_mixers() -> list[str]:
    """Names of every registered cross-mixer, sorted."""
    return CROSS_MIXERS.names()


def build_cross_mixer(name: str, d_model: int, **hparams: Any) -> CrossMixer:
    """A registered cross-mixer by name; an unknown name or hyper-parameter is a clear error."""
    CROSS_MIXERS.check_arguments(name, hparams)
    return CROSS_MIXERS.get(name)(d_model, **hparams)


class _Heads(CrossMixer):
    """What both attentions share: queries from the target, keys and values from the context,
    ``n_heads`` heads of ``d_model / n_heads``, and an output Linear that merges them."""

    def __init__(self, d_model: int, *, n_heads: int) -> None:
        super().__init__(d_model)
        if n_heads <= 0 or d_model % n_heads:
            raise ValueError(f"n_heads must divide d_model {d_model}, got {n_heads}")
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.kv_proj = nn.Linear(d_model, 2 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split(self, x: Tensor) -> Tensor:
        """(B, L, d) -> (B, H, L, d / H)."""
        return x.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)

    def output_projections(self) -> list[nn.Linear]:
        return [self.out_proj]

    def _merge(self, y: Tensor) -> Tensor:
        """(B, H, T, d / H) -> the output (B, T, d)."""
        return self.out_proj(y.transpose(1, 2).flatten(2))

    def _keys_values(self, context: Tensor, context_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        self.check_context(context, context_mask)
        k, v = map(self._split, self.kv_proj(context).chunk(2, dim=-1))
        return k, v

    def memory_flops_per_token(self) -> float:
        return 2.0 * self.d_model * 2 * self.d_model

    def _projection_flops(self) -> float:
        """Per target token: the query and output projections."""
        return 2 * 2.0 * self.d_model * self.d_model


@register_cross_mixer("attention")
class CrossAttention(_Heads):
    """Multi-head softmax cross-attention (Vaswani et al. 2017): each target position's query
    weighs the context's real positions; the memory is their keys and values."""

    def __init__(self, d_model: int, *, n_heads: int = 4) -> None:
        super().__init__(d_model, n_heads=n_heads)

    def memory(self, context: Tensor, context_mask: Tensor | None = None) -> dict[str, Tensor]:
        k, v = self._keys_values(context, context_mask)
        memory = {"k": k, "v": v}
        if context_mask is not None:
            memory["mask"] = context_mask[:, None, None, :]  # (B, 1, 1, S): real keys
        return memory

    def read(self, x: Tensor, memory: dict[str, Tensor]) -> Tensor:
        q = self._split(self.q_proj(x))
        y = F.scaled_dot_product_attention(q, memory["k"], memory["v"], memory.get("mask"))
        return self._merge(y)

    def memory_size(self, source_len: int) -> int:
        return 2 * source_len * self.d_model

    def flops_per_token(self, source_len: int) -> float:
        return self._projection_flops() + 2 * 2.0 * source_len * self.d_model


@register_cross_mixer("linear_attention")
class LinearCrossAttention(_Heads):
    """Linear cross-attention (Katharopoulos et al. 2020), elu(x) + 1 features: each head reads
    phi(q) S / (phi(q) . z) from S = sum_s phi(k_s) v_s^T and z = sum_s phi(k_s) over the real
    context positions, a memory of H (d/H)^2 + d floats however long the source."""

    def __init__(self, d_model: int, *, n_heads: int = 4) -> None:
        super().__init__(d_model, n_heads=n_heads)

    def memory(self, context: Tensor, context_mask: Tensor | None = None) -> dict[str, Tensor]:
        k, v = self._keys_values(context, context_mask)
        k = F.elu(k) + 1
        if context_mask is not None:
            k = k * context_mask[:, None, :, None]  # padding adds nothing to the sums
        return {"kv": k.mT @ v, "z": k.sum(dim=2)}  # (B, H, dh, dh), (B, H, dh)

    def read(self, x: Tensor, memory: dict[str, Tensor]) -> Tensor:
        q = F.elu(self._split(self.q_proj(x))) + 1  # (B, H, T, dh)
        normaliser = (q @ memory["z"][..., None]).clamp_min(EPS)  # (B, H, T, 1)
        return self._merge((q @ memory["kv"]) / normaliser)

    def memory_size(self, source_len: int) -> int:
        head = self.d_model // self.n_heads
        return self.n_heads * head * head + self.d_model

    def memory_flops_per_token(self) -> float:
        """The key and value projections, and each key's outer product with its value."""
        head = self.d_model // self.n_heads
        return super().memory_flops_per_token() + 2.0 * self.n_heads * head * head

    def flops_per_token(self, source_len: int) -> float:
        head = self.d_model // self.n_heads
        return self._projection_flops() + 2.0 * self.n_heads * (head * head + head)
