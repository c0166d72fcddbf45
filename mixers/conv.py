"""Short depthwise convolution over time, the local mixer of H3, Hyena and Mamba blocks.

Each channel has its own kernel of ``kernel_size`` taps spaced ``dilation`` apart
(``F.conv1d`` with ``groups=d_model``). A decoder pads on the left only, so out[t] sees
x[t - span .. t] with span = (kernel_size - 1) * dilation; an encoder centres the window.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixers.base import TokenMixer, register_mixer


@register_mixer("conv")
class ConvMixer(TokenMixer):
    """Depthwise 1D convolution over time between two Linears, optionally SiLU-gated.

    gate=True: in_proj makes (u, g) and y = out_proj(conv(u) * silu(g)), the gated short conv of
    H3/Mamba; SiLU rather than sigmoid because it lets the gate amplify as well as damp, and it is
    what those models use. gate=False: y = out_proj(conv(in_proj(x))), a purely linear token
    mixer (the block's channel mixer supplies the nonlinearity), so the flag ablates the gate only.
    Padded positions are zeroed before the convolution, exactly like the zero padding at the
    ends of a shorter sequence, so they cannot reach real positions. Initialisation: PyTorch's
    Linear and Conv1d defaults.
    """

    supports_step = True
    global_mixing = False  # an encoder sees (kernel_size - 1) * dilation neighbours, not all

    def __init__(
        self,
        d_model: int,
        *,
        causal: bool = True,
        max_len: int | None = None,
        kernel_size: int = 4,
        dilation: int = 1,
        gate: bool = True,
    ) -> None:
        super().__init__(d_model, causal=causal, max_len=max_len)
        if kernel_size < 1 or dilation < 1:
            raise ValueError(
                f"kernel_size and dilation must be at least 1, got {kernel_size} and {dilation}"
            )
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.gate = gate
        self.span = (kernel_size - 1) * dilation  # how far back (or around) out[t] reaches
        # Causal: all of the span on the left. Centred: like PyTorch's padding="same", an odd
        # span (an even kernel_size) puts the extra position on the right, so out[t] sees one
        # more future position than past ones.
        left = self.span if causal else self.span // 2
        self.padding = (left, self.span - left)
        self.in_proj = nn.Linear(d_model, 2 * d_model if gate else d_model)
        self.conv = nn.Conv1d(d_model, d_model, kernel_size, dilation=dilation, groups=d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        self.check_input(x, mask)
        h = self.in_proj(x)
        u, g = h.chunk(2, dim=-1) if self.gate else (h, None)
        if mask is not None:
            u = u.masked_fill(~mask[..., None], 0.0)
        u = F.pad(u.transpose(1, 2), self.padding)  # (B, d, span + L): the layout conv1d wants
        y = self.conv(u).transpose(1, 2)
        if g is not None:
            y = y * F.silu(g)
        return self.out_proj(y)

    def init_state(self, batch_size: int) -> dict[str, Any]:
        """The last span + 1 conv inputs, zeros before the start, like the causal left padding."""
        weight = self.conv.weight
        window = weight.new_zeros(batch_size, self.d_model, self.span + 1)
        return {"window": window, "position": 0}

    def step(self, x_t: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """Shift the new input into the window and apply the kernel to its dilated taps."""
        self.check_step(state["position"])
        h = self.in_proj(x_t)
        u, g = h.chunk(2, dim=-1) if self.gate else (h, None)
        window = torch.cat((state["window"][:, :, 1:], u[:, :, None]), dim=2)
        taps = window[:, :, :: self.dilation]  # (B, d, kernel_size), oldest first like the kernel
        y = (taps * self.conv.weight[:, 0, :]).sum(dim=-1) + self.conv.bias
        if g is not None:
            y = y * F.silu(g)
        return self.out_proj(y), {"window": window, "position": state["position"] + 1}

    def state_size(self, seq_len: int) -> int:
        """The window of the last span + 1 conv inputs: the same at every length."""
        return self.d_model * (self.span + 1)

    def flops_per_token(self, seq_len: int) -> float:
        """in_proj, kernel_size taps per channel, out_proj; independent of seq_len."""
        d = self.d_model
        d_in = 2 * d if self.gate else d
        return 2 * d * d_in + 2 * self.kernel_size * d + 2 * d * d

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
            f"gate={self.gate}"
        )
