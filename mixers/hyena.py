"""Hyena (Poli et al. 2023, "Hyena Hierarchy", arXiv 2302.10866): gated long convolutions whose
filters come from a small MLP over positions, computed as safari's ``HyenaOperator`` (the
paper's reference code, src/models/sequence/hyena.py; Zoology's ``Hyena`` is its order 2 with
in_proj's two gate streams swapped: there the first one gates v before the convolution).

The order-N operator on u (B, L, d_model), as safari's ``forward``:

    x_0, ..., x_{N-1}, v = split(short_conv(in_proj(u)))   N + 1 streams of width d_model
    for o = 0 .. N-2, gate x_i = x_{N-1-o}  (safari: ``enumerate(reversed(x[1:]))``)
        v = v * x_i                                            gate first
        v = h_o * v + D_o v                                    then a long convolution
    y = out_proj(v * x_0)                                      the last gate, x_0

so N gates and N - 1 long convolutions; with the D skips folded into the filters, order 2 is
y = out_proj(x_0 (h_0 * (x_1 v))), H3's shape, and order 3 is x_0 (h_1 * (x_1 (h_0 * (x_2 v)))).
This is the paper's Definition 3.1 (z^1 = v, z^{n+1} = x^n (h^n * z^n), N long convolutions)
with its first filter h^1 the identity (the short convolutions do that job) and x^n = x_{N-n}:
the recurrence the paper's experiments ran. ``short_conv`` is a depthwise convolution of 3 taps
on every stream (safari's ``short_filter``); ``D_o`` is a per-channel skip (safari's filter
``bias``). The long filters are implicit (section 3.3), safari's ``HyenaFilter``:

    h_o[:, s] = window(s) * FFN(PE(s))                 s: the offset, FFN -> (N - 1) d_model
    PE(s) = [t, cos(f_k w), -sin(f_k w)]               t = s / (max_len - 1), w = 2 pi s / max_len
    f_k = linspace(1e-4, K - 1, K), K = (filter_emb_dim - 1) // 2      (safari's bands)
    FFN = Linear -> Sin -> Linear -> Sin -> Linear -> Sin -> Linear (no bias), filter_order wide
    window(s) = exp(-alpha |t|), alpha per output     ("modulate", safari's ExponentialModulation)

PE is safari's ``PositionalEmbedding`` (the real and imaginary parts of exp(-1j f w)); its
first band has f = 1e-4, nearly constant. Sin's frequencies are trainable, one per hidden unit,
shared by the three activations, initialised at ``filter_sine_freq`` (safari's ``w``). The
FFN's (N - 1) d outputs are ordered (channel, filter) like safari's ``'(v o)'`` rearrange, and
alpha runs over them linearly from ln(100) / 1.5 to ln(100) / 0.3 (safari's deltas: 1% at 150%
and at 30% of max_len), so every filter gets the whole spread, interleaved. The filters are
applied by :func:`mixerlab.mixers.kernels.fft_conv.fft_conv` in O(L log L).

Where this differs from safari:

- PE and the decay rates are fixed, computed at each call (safari trains PE at lr 1e-5 by
  default and at lr 0 in its associative-recall configs; its decay rates at lr 0). No weight
  decay on the filter MLP (safari's hyena-filter ``wd: 0``) nor on D (named ``bias`` there).
- Encoder (causal=False), which safari's operator has no form for: one two-sided filter per
  channel, the same MLP at signed offsets -(L-1)..L-1 (t and the sine are odd in s, so the MLP
  tells the directions apart; the window is symmetric in s); the short convolution is
  centred. (Zoology's bidirectional Hyena adds a second, reversed filter, which would double the
  MLP's output layer and count offset 0 twice.)
- No heads, blocks, inner factor, dropout or post-order FFN (safari's defaults: 1, 1, 1, 0, off).
- Init: PyTorch's Linear and Conv1d defaults, D ~ N(0, 1) as safari's filter bias. safari's
  and Zoology's language models redraw every Linear, the filter MLP's included, from
  N(0, 0.02) with zero biases; a mixerlab model keeps a mixer's own init but for out_proj
  (depth-scaled as theirs, see :mod:`mixerlab.mixers.model`).

Padding: padded positions are zeroed after in_proj and at the input of every long convolution,
so they cannot reach real positions. Decoding has no compact recurrence: a step keeps every past
input of each long convolution (the state grows with the position, like attention's KV cache)
and the short convolution's last 2 inputs, and regenerates the filters' t + 1 taps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixerlab.mixers._contract import TokenMixer, register_mixer
from mixerlab.mixers.conv import last_positions
from mixerlab.mixers.kernels.fft_conv import fft_conv, fft_conv_flops
from mixerlab.mixers.mixing_map import MixingMap, toeplitz

SHORT_KERNEL = 3  # taps of the short convolution on the projections (safari's short_filter_order)


def positional_features(offsets: Tensor, max_len: int, emb_dim: int, dtype: torch.dtype) -> Tensor:
    """safari's and Zoology's ``PositionalEmbedding`` at integer offsets s (taps,): (taps,
    emb_dim) rows [t, cos(f_1 w), .., cos(f_K w), -sin(f_1 w), .., -sin(f_K w)] with
    t = s / (max_len - 1) (their linspace(0, 1, max_len)), w = 2 pi s / max_len and
    f = linspace(1e-4, K - 1, K), K = (emb_dim - 1) // 2. Negative s (an encoder's offsets)
    extend the same formula."""
    s = offsets.to(dtype)[:, None]  # (taps, 1)
    bands = (emb_dim - 1) // 2
    f = torch.linspace(1e-4, bands - 1, bands, device=s.device, dtype=dtype)
    angle = f * (2 * math.pi * s / max_len)  # (taps, K)
    return torch.cat((s / max(max_len - 1, 1), angle.cos(), -angle.sin()), dim=-1)


class ImplicitFilter(nn.Module):
    """h[o, c, s] = window(s) * FFN(PE(s)): ``filters`` x ``channels`` filters at offsets s."""

    def __init__(
        self,
        channels: int,
        filters: int,
        max_len: int,
        *,
        emb_dim: int,
        width: int,
        sine_freq: float,
        modulate: bool,
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.emb_dim = emb_dim
        self.channels = channels
        self.filters = filters
        self.layers = nn.ModuleList(
            [nn.Linear(emb_dim, width), nn.Linear(width, width), nn.Linear(width, width)]
        )
        self.out = nn.Linear(width, channels * filters, bias=False)  # units ordered (c, o)
        self.freq = nn.Parameter(torch.full((width,), sine_freq))
        self.modulate = modulate

    def decay_rates(self, dtype: torch.dtype) -> Tensor:
        """alpha over the (channels * filters) outputs, fixed: ln(100) / 1.5 (1% at 150% of
        max_len) up to ln(100) / 0.3 (1% at 30%)."""
        slow, fast = math.log(100) / 1.5, math.log(100) / 0.3
        units = self.channels * self.filters
        return torch.linspace(slow, fast, units, dtype=dtype, device=self.freq.device)

    def forward(self, offsets: Tensor) -> Tensor:
        """Filters at ``offsets`` (taps,) integer -> (filters, channels, taps)."""
        z = positional_features(offsets, self.max_len, self.emb_dim, self.freq.dtype)
        h = z
        for layer in self.layers:
            h = torch.sin(self.freq * layer(h))  # (taps, width)
        h = self.out(h)  # (taps, channels * filters)
        if self.modulate:
            h = h * torch.exp(-z[:, :1].abs() * self.decay_rates(h.dtype))
        return h.view(-1, self.channels, self.filters).permute(2, 1, 0)


@register_mixer("hyena")
class HyenaMixer(TokenMixer):
    """Hyena operator: gated long convolutions with implicit MLP filters (Poli et al. 2023).

    ``order`` N: N gates (projections of the input) around N - 1 long convolutions, as safari's
    reference code (2, the paper's default: gate, convolve, gate). ``filter_order``: the filter
    MLP's width; ``filter_emb_dim``: its positional input, t and (filter_emb_dim - 1) / 2
    cosine-sine pairs (odd, at least 3); ``filter_sine_freq``: the initial frequency of its Sin
    activations; ``modulate``: multiply the filters by the exponentially decaying window. Needs
    max_len: the positions are normalised by it.
    """

    supports_step = True
    requires_max_len = True
    no_weight_decay = ("implicit_filter.*", "D")

    def __init__(
        self,
        d_model: int,
        *,
        causal: bool = True,
        max_len: int | None = None,
        order: int = 2,
        filter_order: int = 64,
        filter_emb_dim: int = 5,
        filter_sine_freq: float = 10.0,
        modulate: bool = True,
    ) -> None:
        super().__init__(d_model, causal=causal, max_len=max_len)
        if order < 2:
            raise ValueError(
                f"hyena order must be at least 2 (N gates around N - 1 long convolutions), "
                f"got {order}"
            )
        if filter_emb_dim < 3 or filter_emb_dim % 2 == 0:
            raise ValueError(
                "filter_emb_dim must be odd and at least 3 (t and cosine-sine pairs), got "
                f"{filter_emb_dim}"
            )
        if filter_order < 1:
            raise ValueError(
                f"filter_order (the filter MLP's width) must be >= 1, got {filter_order}"
            )
        self.order = order
        self.filter_order = filter_order
        width = (order + 1) * d_model
        self.in_proj = nn.Linear(d_model, width)
        self.short_conv = nn.Conv1d(width, width, SHORT_KERNEL, groups=width)
        span = SHORT_KERNEL - 1
        self.short_padding = (span, 0) if causal else (span // 2, span - span // 2)
        self.implicit_filter = ImplicitFilter(
            d_model,
            order - 1,
            max_len,
            emb_dim=filter_emb_dim,
            width=filter_order,
            sine_freq=filter_sine_freq,
            modulate=modulate,
        )
        self.D = nn.Parameter(torch.randn(order - 1, d_model))
        self.out_proj = nn.Linear(d_model, d_model)

    def _operator(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, list[Tensor]]:
        """The operator on x (B, L, d): its output, the short convolution's inputs (B, (N + 1) d,
        L) and each long convolution's input (B, d, L), which a decoder's state keeps."""
        pad = None if mask is None else ~mask[:, None, :]  # (B, 1, L), True at padding
        projected, gates, v, filters = self._streams(x, mask)
        inputs = []
        for gate, h, skip in zip(reversed(gates[1:]), filters, self.D, strict=True):
            v = v * gate
            if pad is not None:
                v = v.masked_fill(pad, 0.0)
            inputs.append(v)
            v = fft_conv(v, h, causal=self.causal) + v * skip[:, None]  # (B, d, L)
        return self.out_proj((v * gates[0]).transpose(1, 2)), projected, inputs

    def _streams(
        self, x: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, list[Tensor], Tensor, Tensor]:
        """What the operator starts from: the projections (B, (N + 1) d, L), padding zeroed; the
        gate streams x_0..x_{N-1} and the value stream v (B, d, L) after the short convolution;
        and the long filters (N - 1, d, taps) over the offsets from ``self._first_offset``."""
        length = x.shape[1]
        projected = self.in_proj(x).transpose(1, 2)  # (B, (N + 1) d, L): time last, like conv1d
        if mask is not None:
            projected = projected.masked_fill(~mask[:, None, :], 0.0)
        streams = self.short_conv(F.pad(projected, self.short_padding))  # (B, (N + 1) d, L)
        *gates, v = streams.split(self.d_model, dim=1)  # x_0..x_{N-1}, v: (B, d, L) each
        offsets = torch.arange(self._first_offset(length), length, device=x.device)
        return projected, gates, v, self.implicit_filter(offsets)

    def _first_offset(self, length: int) -> int:
        """The long filters' first offset t - s: 0 causal, 1 - L centred."""
        return 0 if self.causal else 1 - length

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        self.check_input(x, mask)
        return self._operator(x, mask)[0]

    def mixing_map(self, x: Tensor, mask: Tensor | None = None) -> MixingMap:
        """Each channel's data-controlled operator as one matrix: diag(x_0) (T_N-1 + D) diag(x_N-1)
        ... (T_1 + D) diag(x_1), each T a long filter's Toeplitz matrix and each x_i a gate
        stream of this input, over the value stream v; out_proj is ``finish``."""
        self.check_input(x, mask)
        length = x.shape[1]
        first = self._first_offset(length)
        _, gates, v, filters = self._streams(x, mask)
        real = torch.ones_like(v) if mask is None else mask[:, None, :].to(v.dtype)
        weights = torch.diag_embed(real)  # (B, d, L, L): the identity on real positions
        for gate, h, skip in zip(reversed(gates[1:]), filters, self.D, strict=True):
            step = toeplitz(h, length, first) + torch.diag_embed(skip[:, None].expand(-1, length))
            weights = step @ ((gate * real)[..., :, None] * weights)
        weights = gates[0][..., :, None] * weights

        def finish(mixed: Tensor) -> Tensor:
            return self.out_proj(mixed[..., 0].transpose(1, 2))

        return MixingMap(weights, v[..., None], finish, "channels")

    def prefill(self, x: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """One forward over the prompt (FFT convolutions); its stream inputs are the state."""
        self.check_prefill(x)
        y, projected, inputs = self._operator(x, None)
        return y, {
            "short": last_positions(projected, SHORT_KERNEL - 1),
            "history": torch.stack(inputs, dim=1),  # (B, N - 1, d, T)
            "position": x.shape[1],
        }

    def init_state(self, batch_size: int) -> dict[str, Any]:
        """The short convolution's last 2 inputs (zeros, like its left padding) and, for each of
        the N - 1 long convolutions, its inputs so far (none yet): (B, N - 1, d, 0)."""
        weight = self.in_proj.weight
        width = (self.order + 1) * self.d_model
        return {
            "short": weight.new_zeros(batch_size, width, SHORT_KERNEL - 1),
            "history": weight.new_zeros(batch_size, self.order - 1, self.d_model, 0),
            "position": 0,
        }

    def step(self, x_t: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """One position: short conv over the window, then each gate and long convolution over
        its whole history with the filter's taps at offsets t..0 (oldest input first)."""
        position = state["position"]
        self.check_step(position)
        window = torch.cat((state["short"], self.in_proj(x_t)[:, :, None]), dim=2)  # (B, W, 3)
        streams = (window * self.short_conv.weight[:, 0]).sum(dim=-1) + self.short_conv.bias
        *gates, v = streams.split(self.d_model, dim=-1)  # (B, d) each
        offsets = torch.arange(position + 1, device=x_t.device)
        filters = self.implicit_filter(offsets).flip(-1)  # (N - 1, d, t + 1), oldest first
        history = []
        for o, (gate, h, skip) in enumerate(zip(reversed(gates[1:]), filters, self.D, strict=True)):
            v = v * gate
            past = torch.cat((state["history"][:, o], v[:, :, None]), dim=2)  # (B, d, t + 1)
            history.append(past)
            v = (past * h).sum(dim=-1) + v * skip
        return self.out_proj(v * gates[0]), {
            "short": window[:, :, 1:],
            "history": torch.stack(history, dim=1),
            "position": position + 1,
        }

    def state_size(self, seq_len: int) -> int:
        """Every past input of the N - 1 long convolutions (growing with the length) plus the
        short convolution's last 2 inputs on its (N + 1) d channels."""
        d = self.d_model
        return (self.order - 1) * d * seq_len + (self.order + 1) * d * (SHORT_KERNEL - 1)

    def output_projections(self) -> list[nn.Linear]:
        return [self.out_proj]

    def flops_per_token(self, seq_len: int) -> float:
        """in_proj 2 d (N + 1) d, short conv 2 * 3 (N + 1) d, N gates (d each), N - 1 FFT
        convolutions (:func:`~mixerlab.mixers.kernels.fft_conv.fft_conv_flops`, O(d log L))
        with the D skip (2 d each), out_proj 2 d^2. The filter MLP runs once per forward for
        the whole batch (its cost depends on L and the parameters, not on the tokens), so it is
        not counted."""
        d, n = self.d_model, self.order
        width = (n + 1) * d
        long_convs = (n - 1) * (fft_conv_flops(d, seq_len) + 2 * d)
        return 2 * d * width + 2 * SHORT_KERNEL * width + n * d + long_convs + 2 * d * d

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, order={self.order}, filter_order={self.filter_order}"
