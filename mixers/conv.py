"""Depthwise convolution over time: short (the local mixer of H3, Hyena and Mamba blocks) or
global (a kernel as long as the sequence, computed by FFT). Zoology's BaseConv, which has no
Linears around its convolution, is :mod:`mixerlab.mixers.base_conv`.

Each channel has its own kernel (``F.conv1d`` with ``groups=d_model``). A short kernel has
``kernel_size`` taps spaced ``dilation`` apart: a decoder pads on the left only, so out[t] sees
x[t - span .. t] with span = (kernel_size - 1) * dilation; an encoder centres the window.

``kernel_size=-1`` makes the kernel global: max_len taps for a decoder (offsets 0..max_len-1),
2 max_len - 1 for an encoder (offsets -(max_len-1)..max_len-1, so every position sees every real
position). A sequence of length L uses the L (or 2L - 1) taps nearest offset 0, exactly what
``F.conv1d`` with that kernel and zero padding computes, but in O(L log L) by
:func:`~mixerlab.mixers.kernels.fft_conv.fft_conv`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixerlab.mixers._contract import TokenMixer, register_mixer
from mixerlab.mixers.kernels.fft_conv import fft_conv, fft_conv_flops
from mixerlab.mixers.mixing_map import MixingMap, toeplitz

GATES = ("silu", "linear", "none")


def last_positions(u: Tensor, size: int) -> Tensor:
    """The last ``size`` positions of u (B, C, L), zeros before the start when L < size: the
    window a causal convolution's decoding state holds after u. A contiguous copy."""
    padded = F.pad(u, (max(0, size - u.shape[-1]), 0))
    return padded[..., padded.shape[-1] - size :].contiguous()


@register_mixer("conv")
class ConvMixer(TokenMixer):
    """Depthwise 1D convolution over time between two Linears, short or global, optionally gated.

    gate="silu": in_proj makes (u, g) and y = out_proj(conv(u) * silu(g)), the gated short conv
    of H3/Mamba; SiLU rather than sigmoid because it lets the gate amplify as well as damp, and
    it is what those models use. gate="linear": y = out_proj(conv(u) * g), the gate without a
    nonlinearity (BaseConv's product, but between in_proj and out_proj, without BaseConv's skip:
    Zoology's BaseConv itself is ``mixer=base_conv``). gate="none":
    y = out_proj(conv(in_proj(x))), a purely linear token mixer (the block's channel mixer
    supplies the nonlinearity), so the option ablates the gate only.

    The global kernel is explicit, initialised like Zoology's ``LongConvolution``: every tap
    N(0, 1), so the output's scale grows like sqrt(L) at init.

    Padded positions are zeroed before the convolution, exactly like the zero padding at the
    ends of a shorter sequence, so they cannot reach real positions. Initialisation otherwise:
    PyTorch's Linear and Conv1d defaults.
    """

    supports_step = True

    def __init__(
        self,
        d_model: int,
        *,
        causal: bool = True,
        max_len: int | None = None,
        kernel_size: int = 4,
        dilation: int = 1,
        gate: str = "silu",
    ) -> None:
        super().__init__(d_model, causal=causal, max_len=max_len)
        if gate not in GATES:
            raise ValueError(f"unknown conv gate {gate!r}; choose one of: {', '.join(GATES)}")
        # A global kernel mixes every position; a short one only its window (the encoder check
        # then asks for later positions within it, not the last one).
        self.global_mixing = kernel_size == -1
        if self.global_mixing:
            if max_len is None or max_len <= 0:
                raise ValueError(
                    f"ConvMixer with kernel_size=-1 (a kernel as long as the sequence) needs a "
                    f"positive max_len, got {max_len!r}; pass max_len=<longest sequence length>"
                )
            if dilation != 1:
                raise ValueError(
                    f"a global kernel (kernel_size=-1) takes dilation=1, got {dilation}"
                )
            taps = max_len if causal else 2 * max_len - 1
        elif kernel_size < 1 or dilation < 1:
            raise ValueError(
                f"kernel_size must be -1 (global) or at least 1 and dilation at least 1, got "
                f"{kernel_size} and {dilation}"
            )
        else:
            taps = kernel_size
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.gate = gate
        self.span = (taps - 1) * dilation  # how far back (or around) out[t] reaches
        # Causal: all of the span on the left. Centred: like PyTorch's padding="same", an odd
        # span (an even kernel_size) puts the extra position on the right, so out[t] sees one
        # more future position than past ones.
        left = self.span if causal else self.span // 2
        self.padding = (left, self.span - left)
        self.in_proj = nn.Linear(d_model, d_model if gate == "none" else 2 * d_model)
        self.conv = nn.Conv1d(d_model, d_model, taps, dilation=dilation, groups=d_model)
        if self.global_mixing:
            nn.init.normal_(self.conv.weight)  # Zoology's LongConvolution: randn(d_model, L)
        self.out_proj = nn.Linear(d_model, d_model)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """in_proj, split into the conv input u and the gate input g (None without a gate)."""
        h = self.in_proj(x)
        return (h, None) if self.gate == "none" else h.chunk(2, dim=-1)

    def _gated(self, y: Tensor, g: Tensor | None) -> Tensor:
        if g is None:
            return y
        return y * (F.silu(g) if self.gate == "silu" else g)

    def _global_conv(self, u: Tensor) -> Tensor:
        """The global kernel on u (B, d, L) by FFT: the taps of the L (or 2L - 1) offsets nearest
        0, which are what a zero-padded F.conv1d with the max_len kernel would read."""
        length = u.shape[-1]
        taps = length if self.causal else 2 * length - 1
        start = self.max_len - length  # F.conv1d's weight runs from the oldest offset to 0 (+)
        kernel = self.conv.weight[:, 0, start : start + taps].flip(-1)  # (d, taps), offset order
        return fft_conv(u, kernel, causal=self.causal) + self.conv.bias[:, None]

    def _mix(self, u: Tensor, g: Tensor | None) -> Tensor:
        """Convolve u (B, d, L), gate with g (B, L, d) and project: (B, L, d)."""
        y = self._global_conv(u) if self.global_mixing else self.conv(F.pad(u, self.padding))
        return self.out_proj(self._gated(y.transpose(1, 2), g))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        self.check_input(x, mask)
        u, g = self._project(x)  # (B, L, d) each
        if mask is not None:
            u = u.masked_fill(~mask[..., None], 0.0)
        return self._mix(u.transpose(1, 2), g)  # (B, d, L): the layout conv1d and fft_conv want

    def mixing_map(self, x: Tensor, mask: Tensor | None = None) -> MixingMap:
        """Each channel's Toeplitz matrix: ``weights[b, c, t, s]`` is the tap that out[t] gives
        u[s] (F.conv1d's taps read over the padding, so the global kernel's FFT path too); the
        conv bias, the gate and out_proj are ``finish``."""
        self.check_input(x, mask)
        u, g = self._project(x)
        if mask is not None:
            u = u.masked_fill(~mask[..., None], 0.0)
        # F.conv1d's out[t] = sum_j w[j] u[t - left + j dilation]: tap j at offset left - j d
        dilated = self.conv.weight.new_zeros(self.d_model, self.span + 1)
        dilated[:, :: self.dilation] = self.conv.weight[:, 0]
        matrix = toeplitz(dilated.flip(-1), x.shape[1], self.padding[0] - self.span)

        def finish(mixed: Tensor) -> Tensor:
            convolved = mixed[..., 0] + self.conv.bias[:, None]  # (B, d, L)
            return self.out_proj(self._gated(convolved.transpose(1, 2), g))

        weights = matrix.expand(x.shape[0], -1, -1, -1)
        if mask is not None:  # padded inputs are zeroed before the convolution: nothing read
            weights = weights * mask[:, None, None, :]
        return MixingMap(weights, u.transpose(1, 2)[..., None], finish, "channels")

    def prefill(self, x: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """One forward over the prompt; the state is its last conv inputs (all, if global)."""
        self.check_prefill(x)
        u, g = self._project(x)
        u = u.transpose(1, 2)  # (B, d, T)
        held = u.shape[2] if self.global_mixing else self.span + 1
        state = {"window": last_positions(u, held), "position": x.shape[1]}
        return self._mix(u, g), state

    def init_state(self, batch_size: int) -> dict[str, Any]:
        """Short kernel: the last span + 1 conv inputs, zeros before the start, like the causal
        left padding. Global kernel: every conv input so far, none yet."""
        weight = self.conv.weight
        held = 0 if self.global_mixing else self.span + 1
        return {"window": weight.new_zeros(batch_size, self.d_model, held), "position": 0}

    def step(self, x_t: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """Shift the new input into the window and apply the kernel to its (dilated) taps; a
        global kernel keeps every input and reads its newest t + 1 taps."""
        self.check_step(state["position"])
        u, g = self._project(x_t)  # (B, d) each
        if self.global_mixing:
            window = torch.cat((state["window"], u[:, :, None]), dim=2)  # (B, d, t + 1)
            taps, weight = window, self.conv.weight[:, 0, -window.shape[2] :]
        else:
            window = torch.cat((state["window"][:, :, 1:], u[:, :, None]), dim=2)
            taps, weight = window[:, :, :: self.dilation], self.conv.weight[:, 0, :]
        y = (taps * weight).sum(dim=-1) + self.conv.bias  # taps oldest first, like the kernel
        return self.out_proj(self._gated(y, g)), {
            "window": window,
            "position": state["position"] + 1,
        }

    def state_size(self, seq_len: int) -> int:
        """Short: the window of the last span + 1 conv inputs, the same at every length.
        Global: every conv input so far, growing with the length like a KV cache."""
        return self.d_model * (seq_len if self.global_mixing else self.span + 1)

    def output_projections(self) -> list[nn.Linear]:
        return [self.out_proj]

    def flops_per_token(self, seq_len: int) -> float:
        """in_proj, the convolution, out_proj. Short: kernel_size taps per channel, independent
        of seq_len. Global: :func:`fft_conv_flops`, O(d log L) per token."""
        d = self.d_model
        d_in = d if self.gate == "none" else 2 * d
        conv = fft_conv_flops(d, seq_len) if self.global_mixing else 2 * self.kernel_size * d
        return 2 * d * d_in + conv + 2 * d * d

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
            f"gate={self.gate!r}"
        )
