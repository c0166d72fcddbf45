"""Recurrent token mixer: PyTorch's fused LSTM/GRU kernels (cuDNN on GPU, oneDNN/MKL on CPU).

A decoder runs the recurrence left to right; an encoder runs it both ways and merges the two
directions with a Linear. The encoder packs padded batches so that the backward direction starts
at each sequence's last real token instead of reading the padding first.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mixerlab.mixers._contract import TokenMixer, register_mixer

CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU}
GATES = {"lstm": 4, "gru": 3}


@register_mixer("rnn")
class RecurrentMixer(TokenMixer):
    """LSTM or GRU over time; bidirectional with a merging Linear when not causal.

    The hidden size is d_model per direction, so a causal mixer's output is the top layer's
    hidden state as is; an encoder concatenates both directions (2 d_model) and a Linear maps
    them back to d_model. ``dropout`` drops every recurrent layer's output in training.
    Initialisation: PyTorch's defaults, uniform in +-1/sqrt(d_model), which keeps gates unsaturated.
    """

    supports_step = True

    def __init__(
        self,
        d_model: int,
        *,
        causal: bool = True,
        max_len: int | None = None,
        cell: str = "lstm",
        n_layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(d_model, causal=causal, max_len=max_len)
        if cell not in CELLS:
            raise ValueError(f"unknown rnn cell {cell!r}; choose one of: {', '.join(CELLS)}")
        if n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {n_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.cell = cell
        self.n_layers = n_layers
        # nn.LSTM's own dropout acts between stacked layers; self.drop covers the top layer.
        self.rnn = CELLS[cell](
            d_model,
            d_model,
            num_layers=n_layers,
            batch_first=True,
            dropout=dropout if n_layers > 1 else 0.0,
            bidirectional=not causal,
        )
        self.drop = nn.Dropout(dropout)
        self.merge = None if causal else nn.Linear(2 * d_model, d_model)

    def _recur(
        self, x: Tensor, hidden: Any = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, Any]:
        """The fused kernel over x (B, L, d_model), packed by ``lengths`` when given, in its
        weights' dtype (float32) with autocast off whatever the run's precision: oneDNN has no
        LSTM for bf16 inputs under CPU autocast, and a state rounded to bf16 every step would
        forget its low bits (as the selective scan's would). Outputs come back in x's dtype."""
        inputs = x.to(self.rnn.weight_hh_l0.dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            if lengths is None:
                y, hidden = self.rnn(inputs, hidden)
            else:
                packed = pack_padded_sequence(
                    inputs, lengths, batch_first=True, enforce_sorted=False
                )
                y, hidden = self.rnn(packed, hidden)
                y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        return y.to(x.dtype), hidden

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        self.check_input(x, mask)
        # Packing needs the lengths on the CPU: the one host sync, only for encoders given a mask.
        lengths = None if mask is None or self.causal else mask.sum(dim=1).cpu()
        if lengths is not None and bool((lengths < x.shape[1]).any()):
            # A sequence with no real token runs over one step of padding (its outputs are
            # unspecified) since packing rejects length 0.
            y, _ = self._recur(x, lengths=lengths.clamp(min=1))
        else:
            # Right padding comes after every real token, so a forward-only pass never reads it.
            y, _ = self._recur(x)
        y = self.drop(y)
        if self.merge is not None:
            y = self.merge(y)
        if mask is not None:
            y = y.masked_fill(~mask[..., None], 0.0)
        return y

    def init_state(self, batch_size: int) -> dict[str, Any]:
        """Zero hidden (and, for LSTM, cell) states of every layer, as nn.LSTM starts from."""
        weight = self.rnn.weight_hh_l0
        h = weight.new_zeros(self.n_layers, batch_size, self.d_model)
        hidden = (h, torch.zeros_like(h)) if self.cell == "lstm" else h
        return {"hidden": hidden, "position": 0}

    def step(self, x_t: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """Advance the same recurrent module by one length-1 input from the carried state."""
        self.check_step(state["position"])
        y, hidden = self._recur(x_t[:, None, :], state["hidden"])
        return self.drop(y[:, 0]), {"hidden": hidden, "position": state["position"] + 1}

    def prefill(self, x: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """One fused pass over the prompt; the kernel returns the last (h, c) with the outputs."""
        self.check_prefill(x)
        y, hidden = self._recur(x)
        return self.drop(y), {"hidden": hidden, "position": x.shape[1]}

    def state_size(self, seq_len: int) -> int:
        """Each layer's hidden state (and LSTM cell): the same at every length."""
        return (2 if self.cell == "lstm" else 1) * self.n_layers * self.d_model

    def output_projections(self) -> list[nn.Linear]:
        """The encoder's merge of both directions; a decoder's output is the hidden state."""
        return [] if self.merge is None else [self.merge]

    def flops_per_token(self, seq_len: int) -> float:
        """Gate matmuls per token: each gate reads the layer input and the previous hidden state.

        Layers above the first of an encoder read both directions (2 d_model). Independent of
        seq_len: a recurrence costs the same per token at any length.
        """
        d = self.d_model
        directions = 1 if self.causal else 2
        total = 0.0
        for layer in range(self.n_layers):
            d_in = d if layer == 0 else directions * d
            total += directions * GATES[self.cell] * 2 * (d_in * d + d * d)
        if self.merge is not None:
            total += 2 * 2 * d * d
        return total

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, cell={self.cell!r}, n_layers={self.n_layers}"
