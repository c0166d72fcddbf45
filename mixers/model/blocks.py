"""What surrounds a token mixer in each layer: the norms, the channel mixer (FFN) and the
pre-norm residual block that joins them (see :mod:`mixerlab.mixers.model` for the whole model)."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from mixerlab.mixers._contract import TokenMixer
from mixerlab.mixers.model.cross_mixers import CrossMixer
from mixerlab.mixers.model.moe import MoEFeedForward

FFN_KINDS = ("mlp", "glu", "moe", "none")
NORM_KINDS = ("layernorm", "rmsnorm")


def check_choice(what: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}")
    return value


def make_norm(kind: str, d_model: int) -> nn.Module:
    check_choice("norm", kind, NORM_KINDS)
    return nn.LayerNorm(d_model) if kind == "layernorm" else nn.RMSNorm(d_model)


class MLP(nn.Module):
    """The Transformer's position-wise feed-forward network: Linear -> GELU -> Linear."""

    def __init__(self, d_model: int, d_hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, d_hidden)
        self.down = nn.Linear(d_hidden, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.down(self.dropout(F.gelu(self.up(x))))

    def flops_per_token(self) -> float:
        return 2.0 * 2 * self.up.in_features * self.up.out_features


class GLU(nn.Module):
    """SwiGLU feed-forward (Shazeer 2020): ``down(silu(gate(x)) * up(x))``.

    The hidden width is 2/3 of the MLP's so that ``ffn=glu`` and ``ffn=mlp`` have the same number
    of parameters at the same ``ffn_mult``.
    """

    def __init__(self, d_model: int, d_hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        d_hidden = max(1, round(2 * d_hidden / 3))
        self.gate_up = nn.Linear(d_model, 2 * d_hidden)
        self.down = nn.Linear(d_hidden, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(self.dropout(F.silu(gate) * up))

    def flops_per_token(self) -> float:
        return 2.0 * 3 * self.down.in_features * self.down.out_features


def make_ffn(
    kind: str, d_model: int, d_hidden: int, dropout: float, hparams: dict[str, Any]
) -> nn.Module | None:
    check_choice("ffn", kind, FFN_KINDS)
    if kind == "none":
        return None
    if kind == "moe":
        return MoEFeedForward(d_model, d_hidden, dropout=dropout, **hparams)
    if hparams:
        raise ValueError(
            f"ffn={kind!r} takes no ffn_hparams, got {', '.join(sorted(hparams))}; "
            "ffn_hparams configure ffn=moe (n_experts, capacity_factor, aux_loss_weight)"
        )
    return (MLP if kind == "mlp" else GLU)(d_model, d_hidden, dropout)


class Block(nn.Module):
    """One pre-norm residual block: token mixer, then (in an encoder-decoder's decoder) a
    cross-mixer reading the encoder's ``memory``, then channel mixer."""

    def __init__(
        self,
        mixer: TokenMixer,
        ffn: nn.Module | None,
        norm: str = "layernorm",
        dropout: float = 0.0,
        cross: CrossMixer | None = None,
    ) -> None:
        super().__init__()
        self.mixer_norm = make_norm(norm, mixer.d_model)
        self.mixer = mixer
        self.cross_norm = make_norm(norm, mixer.d_model) if cross is not None else None
        self.cross = cross
        self.ffn_norm = make_norm(norm, mixer.d_model) if ffn is not None else None
        self.ffn = ffn
        self.dropout = nn.Dropout(dropout)

    def _read(self, x: Tensor, memory: Any) -> Tensor:
        """The cross-mixer's residual on x (B, L, d_model): x itself in a block without one."""
        if self.cross is None:
            return x
        if memory is None:
            raise ValueError(
                "this block reads an encoder: pass the memories of its cross-mixers "
                "(SequenceModel.memories(encoder output, source mask))"
            )
        return x + self.dropout(self.cross.read(self.cross_norm(x), memory))

    def _channel(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """The last part of the block, on x (B, L, d_model): the channel mixer's residual."""
        if self.ffn is None:
            return x
        return x + self.dropout(self.ffn(self.ffn_norm(x), mask))

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        memory: Any = None,
        prefix: Tensor | None = None,
    ) -> Tensor:
        """``prefix`` (B,): the mixer reads that many positions bidirectionally (a prefix LM);
        passed only when given, so mixers without ``supports_prefix`` keep their signature."""
        h = self.mixer_norm(x)
        y = self.mixer(h, mask) if prefix is None else self.mixer(h, mask, prefix=prefix)
        return self._channel(self._read(x + self.dropout(y), memory), mask)

    def prefill(
        self, x: Tensor, memory: Any = None, prefix: Tensor | None = None
    ) -> tuple[Tensor, Any]:
        """``forward`` over a prompt x (B, T, d_model) and the mixer's decoding state after it."""
        h = self.mixer_norm(x)
        y, state = self.mixer.prefill(h) if prefix is None else self.mixer.prefill(h, prefix)
        return self._channel(self._read(x + self.dropout(y), memory)), state

    def step(self, x_t: Tensor, state: Any, memory: Any = None) -> tuple[Tensor, Any]:
        """One position of ``forward`` for incremental decoding; ``x_t`` is (B, d_model). A
        cross-mixer reads the memory made once from the encoder, so it has no state to carry."""
        y_t, state = self.mixer.step(self.mixer_norm(x_t), state)
        x = self._read((x_t + self.dropout(y_t))[:, None], memory)
        return self._channel(x)[:, 0], state
