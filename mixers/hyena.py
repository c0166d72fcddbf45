"""Hyena (Poli et al. 2023, "Hyena Hierarchy", arXiv 2302.10866): gated long convolutions whose
filters come from a small MLP over positions.

The order-N operator (section 3.1, the Hyena recurrence) on u (B, L, d_model):

    x_1, ..., x_N, v = split(short_conv(in_proj(u)))     N + 1 streams of width d_model
    z_1 = v
    z_{n+1} = x_n * (h_n * z_n + D_n z_n)                  n = 1..N   (h * z: long convolution)
    y = out_proj(z_{N+1})                                  y = x_N (h_N * (... x_1 (h_1 * v)))

``short_conv`` is a depthwise convolution of 3 taps on every stream; ``D_n`` is a per-channel
skip (the filter's bias). The long filters are implicit (section 3.3):

    h_n[s] = window(s) * FFN(PE(s))_n                      s: the offset, FFN -> N * d_model
    PE(s) = [s / max_len, cos(2 pi k s / max_len), sin(2 pi k s / max_len)]   k = 1..K
    FFN = Linear -> Sin -> Linear -> Sin -> Linear -> Sin -> Linear     (filter_order wide)
    window(s) = exp(-alpha_c |s| / max_len)                ("modulate"; alpha_c per channel)

and are applied by :func:`mixerlab.mixers.kernels.fft_conv.fft_conv` in O(L log L).
``filter_emb_dim`` = 2K + 1 is the width of PE (safari's ``emb_dim``). Sin's frequencies are
trainable, one per hidden unit, shared by the three activations and initialised at
``filter_sine_freq`` (safari's ``w``).

What the paper leaves open, and what this file picks:

- The decay rates: safari's ExponentialModulation: alpha spread linearly over the channels from
  ln(100) / 1.5 to ln(100) / 0.3, so the fastest channel is down to 1% at 30% of max_len and the
  slowest at 150%; every filter h_n gets the whole spread.
- safari's reference code runs N - 1 long convolutions (gate, then convolve); this file runs the
  paper's N, one per gate.
- The positional features: k = 1..K periods per max_len (safari's frequencies run from 1e-4 to
  K - 1, so its first pair is nearly constant); fixed, like the decay rates (safari trains the
  features at lr 1e-5, and at lr 0 in its associative-recall configs).
- Encoder (causal=False): one two-sided filter per channel, the same MLP evaluated at signed
  offsets -(L-1)..L-1 (PE's s / max_len and sine are odd in s, so it tells the two directions
  apart; the window is symmetric). Two causal filters, one per direction (Zoology's
  bidirectional Hyena), would double the MLP's output layer and count offset 0 twice; this keeps
  the parameters of both modes identical. The short convolution is centred.
- Weight decay: none on the implicit filter's parameters (safari's hyena-filter ``wd: 0``: decay
  would pull the filters towards zero) nor on D.

Padding: padded positions are zeroed after in_proj and before every long convolution, so they
cannot reach real positions. Decoding has no compact recurrence: a step keeps every past input
of each long convolution (the state grows with the position, like attention's KV cache) and the
short convolution's last 2 inputs, and regenerates the filter's t + 1 taps.
Initialisation: PyTorch's Linear and Conv1d defaults; D ~ N(0, 1) as in safari.
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

SHORT_KERNEL = 3  # taps of the short convolution on the projections (safari's short_filter_order)


class ImplicitFilter(nn.Module):
    """h[:, s] = window(s) * FFN(PE(s)): ``channels`` filters evaluated at integer offsets s.

    ``decay_channels`` is the width over which the decay rates are spread; the spread repeats for
    every group of that many channels (one group per Hyena order).
    """

    def __init__(
        self,
        channels: int,
        max_len: int,
        *,
        emb_dim: int,
        width: int,
        sine_freq: float,
        modulate: bool,
        decay_channels: int,
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.n_freqs = (emb_dim - 1) // 2
        self.layers = nn.ModuleList(
            [nn.Linear(emb_dim, width), nn.Linear(width, width), nn.Linear(width, width)]
        )
        self.out = nn.Linear(width, channels, bias=False)
        self.freq = nn.Parameter(torch.full((width,), sine_freq))
        self.modulate = modulate
        fast, slow = math.log(100) / 0.3, math.log(100) / 1.5  # 1% at 30% and 150% of max_len
        alpha = torch.linspace(slow, fast, decay_channels).repeat(channels // decay_channels)
        self.register_buffer("alpha", alpha, persistent=False)  # (channels,), a fixed constant

    def forward(self, offsets: Tensor) -> Tensor:
        """Filters at ``offsets`` (taps,) integer -> (channels, taps)."""
        s = offsets.to(self.freq.dtype)[:, None] / self.max_len  # (taps, 1), in (-1, 1)
        k = torch.arange(1, self.n_freqs + 1, device=s.device, dtype=s.dtype)
        angle = 2 * math.pi * s * k  # (taps, K)
        h = torch.cat((s, angle.cos(), angle.sin()), dim=-1)  # (taps, emb_dim)
        for layer in self.layers:
            h = torch.sin(self.freq * layer(h))  # (taps, width)
        h = self.out(h)  # (taps, channels)
        if self.modulate:
            h = h * torch.exp(-s.abs() * self.alpha)
        return h.T


@register_mixer("hyena")
class HyenaMixer(TokenMixer):
    """Hyena operator: gated long convolutions with implicit MLP filters (Poli et al. 2023).

    ``order`` N long convolutions, each gated by one of N projections of the input (2 is the
    paper's default; 1 is a single gated long convolution). ``filter_order``: the filter MLP's
    width; ``filter_emb_dim``: its positional input, t and (filter_emb_dim - 1) / 2 sine-cosine
    pairs (odd, at least 3); ``filter_sine_freq``: the initial frequency of its Sin activations;
    ``modulate``: multiply the filters by the exponentially decaying window. Needs max_len: the
    positions are normalised by it.
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
        if order < 1:
            raise ValueError(f"hyena order must be at least 1 (the number of gates), got {order}")
        if filter_emb_dim < 3 or filter_emb_dim % 2 == 0:
            raise ValueError(
                "filter_emb_dim must be odd and at least 3 (t and sine-cosine pairs), got "
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
            order * d_model,
            max_len,
            emb_dim=filter_emb_dim,
            width=filter_order,
            sine_freq=filter_sine_freq,
            modulate=modulate,
            decay_channels=d_model,
        )
        self.D = nn.Parameter(torch.randn(order, d_model))
        self.out_proj = nn.Linear(d_model, d_model)

    def _operator(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, list[Tensor]]:
        """The operator on x (B, L, d): its output, the short convolution's inputs (B, (N + 1) d,
        L) and each long convolution's input z_n (B, d, L), which a decoder's state keeps."""
        length = x.shape[1]
        pad = None if mask is None else ~mask[:, None, :]  # (B, 1, L), True at padding
        projected = self.in_proj(x).transpose(1, 2)  # (B, (N + 1) d, L): time last, like conv1d
        if pad is not None:
            projected = projected.masked_fill(pad, 0.0)
        streams = self.short_conv(F.pad(projected, self.short_padding))  # (B, (N + 1) d, L)
        *gates, z = streams.split(self.d_model, dim=1)  # x_1..x_N, v: (B, d, L) each
        if self.causal:
            offsets = torch.arange(length, device=x.device)
        else:
            offsets = torch.arange(1 - length, length, device=x.device)
        filters = self.implicit_filter(offsets).split(self.d_model)  # N x (d, taps)
        inputs = []
        for gate, h, skip in zip(gates, filters, self.D, strict=True):
            if pad is not None:
                z = z.masked_fill(pad, 0.0)
            inputs.append(z)
            z = gate * (fft_conv(z, h, causal=self.causal) + z * skip[:, None])  # (B, d, L)
        return self.out_proj(z.transpose(1, 2)), projected, inputs

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        self.check_input(x, mask)
        return self._operator(x, mask)[0]

    def prefill(self, x: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """One forward over the prompt (FFT convolutions); its stream inputs are the state."""
        self.check_prefill(x)
        y, projected, inputs = self._operator(x, None)
        return y, {
            "short": last_positions(projected, SHORT_KERNEL - 1),
            "history": torch.stack(inputs, dim=1),  # (B, N, d, T)
            "position": x.shape[1],
        }

    def init_state(self, batch_size: int) -> dict[str, Any]:
        """The short convolution's last 2 inputs (zeros, like its left padding) and, for each of
        the N long convolutions, its inputs so far (none yet): (B, N, d, 0)."""
        weight = self.in_proj.weight
        width = (self.order + 1) * self.d_model
        return {
            "short": weight.new_zeros(batch_size, width, SHORT_KERNEL - 1),
            "history": weight.new_zeros(batch_size, self.order, self.d_model, 0),
            "position": 0,
        }

    def step(self, x_t: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """One position: short conv over the window, then each long convolution over its whole
        history with the filter's taps at offsets t..0 (oldest input first)."""
        position = state["position"]
        self.check_step(position)
        window = torch.cat((state["short"], self.in_proj(x_t)[:, :, None]), dim=2)  # (B, W, 3)
        streams = (window * self.short_conv.weight[:, 0]).sum(dim=-1) + self.short_conv.bias
        *gates, z = streams.split(self.d_model, dim=-1)  # (B, d) each
        offsets = torch.arange(position + 1, device=x_t.device)
        filters = self.implicit_filter(offsets).flip(-1).split(self.d_model)  # N x (d, t + 1)
        history = []
        for n, (gate, h, skip) in enumerate(zip(gates, filters, self.D, strict=True)):
            past = torch.cat((state["history"][:, n], z[:, :, None]), dim=2)  # (B, d, t + 1)
            history.append(past)
            z = gate * ((past * h).sum(dim=-1) + z * skip)
        return self.out_proj(z), {
            "short": window[:, :, 1:],
            "history": torch.stack(history, dim=1),
            "position": position + 1,
        }

    def state_size(self, seq_len: int) -> int:
        """Every past input of the N long convolutions (growing with the length) plus the short
        convolution's last 2 inputs on its (N + 1) d channels."""
        d = self.d_model
        return self.order * d * seq_len + (self.order + 1) * d * (SHORT_KERNEL - 1)

    def output_projections(self) -> list[nn.Linear]:
        return [self.out_proj]

    def flops_per_token(self, seq_len: int) -> float:
        """in_proj 2 d (N + 1) d, short conv 2 * 3 (N + 1) d, N FFT convolutions
        (:func:`~mixerlab.mixers.kernels.fft_conv.fft_conv_flops`, O(d log L)) with the D skip
        and the gate (3 d each), out_proj 2 d^2. The filter MLP runs once per forward for the
        whole batch (its cost depends on L and the parameters, not on the tokens), so it is not
        counted."""
        d, n = self.d_model, self.order
        width = (n + 1) * d
        long_convs = n * (fft_conv_flops(d, seq_len) + 3 * d)
        return 2 * d * width + 2 * SHORT_KERNEL * width + long_convs + 2 * d * d

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, order={self.order}, filter_order={self.filter_order}"
