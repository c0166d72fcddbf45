"""Diagonal state-space models: S4D (Gu et al. 2022) and Mamba's selective SSM (Gu & Dao 2023).

Both run, per channel, the linear recurrence of a diagonal state matrix A with step size dt::

    h_t = exp(dt A) h_{t-1} + dB u_t        y_t = C h_t + D u_t

S4D discretises B by zero-order hold, dB = (exp(dt A) - 1) / A * B; Mamba's code (and so this
one) keeps ZOH for A but takes the Euler step dB = dt B, which its paper notes is close.

``selective=false`` is S4D: A, B, C and dt do not depend on the input, so the map u -> y is a
convolution with the kernel K[l] = C diag(exp(dt A))^l dB (a Vandermonde product,
:meth:`S4D.kernel`), applied by FFT over 2L points so the circular wrap lands in the zero
padding (causal). B is fixed to 1 and folded into C, as the S4D paper does (only C B matters).
The layer around it is the paper's: GELU(y), then a Linear to 2 d_model and a GLU. Encoder mode
learns a second C for the backward direction (A and dt, the timescales, are shared, as in S4's
bidirectional option): the forward kernel covers offsets 0..L-1, the backward one offsets
-1..-(L-1), and both go into one length-2L circular kernel, so the current token is counted once.
A is initialised by ``init``: S4D-Lin, A_n = -1/2 + i pi n; S4D-Inv, A_n = -1/2 + i (N/pi)
(N/(2n+1) - 1), both with N/2 complex modes (n = 0..N/2-1; each stands for a conjugate pair, so
y = 2 Re(C h) and the state is N real numbers); S4D-Real, A_n = -(n+1) with N real modes
(n = 0..N-1; S4's code keeps N/2 modes even here). Complex modes use torch's complex math;
parameters stay real (C as real/imag pairs, A as log(-Re A) and Im A) so optimisers and mixed
precision never meet a complex tensor.

``selective=true`` is Mamba's block: in_proj -> (x, z), x -> causal depthwise conv -> SiLU ->
selective SSM -> + D x -> times SiLU(z) -> out_proj. dt_t = softplus(W_up W_down x_t + bias) (rank
``dt_rank``), B_t and C_t (d_state each) are projections of x_t, A = -exp(A_log) is real with the
S4D-Real init (Mamba's choice: the only init allowed here, since the scan is real), and the dt
bias is initialised so that dt is log-uniform in [dt_min, dt_max]. The scan is
:mod:`mixerlab.mixers.kernels.selective_scan`: the recurrence in place, chunk by chunk
(``chunk_size`` positions at most), with a hand-written backward that recomputes each chunk.
Encoder mode, as Vision Mamba's bidirectional block: a second set of SSM parameters (x_proj,
dt_proj, A_log, D) scans the reversed sequence and the two outputs are summed before the gate;
in_proj, out_proj and the short conv are shared, the conv centred (Vim gives each direction its
own causal conv). Own SSM parameters let the directions select and forget differently; sharing
the rest keeps the encoder ~15% larger, not 2x.

Padding: padded inputs are zeroed before the convolutions (FFT or short conv), exactly like the
zero padding past a sequence's end; the selective scan also gets dt = 0 at pads, so a pad neither
decays the state nor writes to it, and the reversed scan starts at the last real token.

Left open by the papers and chosen here: S4D's D ~ N(0, 1) and C ~ N(0, 1) as S4's code, Mamba's
D = 1; Mamba's residual rescaling of out_proj at init is the model's business, not the mixer's
(``model.mixer_init=mamba``). S4D computes in float32, or float64 for a float64 input.
``expand``, ``dt_rank``, ``conv_kernel`` and ``chunk_size`` belong to the selective block; S4D's
layer has width d_model, no short conv and no scan, and ignores them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixerlab.mixers._contract import TokenMixer, register_mixer
from mixerlab.mixers.conv import last_positions
from mixerlab.mixers.kernels.selective_scan import selective_scan
from mixerlab.mixers.mixing_map import MixingMap

INITS = ("lin", "inv", "real")


def s4d_eigenvalues(init: str, d_state: int) -> Tensor:
    """The diagonal of A at init: d_state // 2 complex modes (lin, inv) or d_state real ones."""
    if init == "real":
        return -torch.arange(1, d_state + 1, dtype=torch.float32)
    n = torch.arange(d_state // 2, dtype=torch.float32)
    imag = math.pi * n if init == "lin" else d_state / math.pi * (d_state / (2 * n + 1) - 1)
    return torch.complex(torch.full_like(n, -0.5), imag)


def log_uniform(size: int, low: float, high: float) -> Tensor:
    """``size`` step sizes drawn log-uniformly in [low, high]: S4D's and Mamba's dt init."""
    return torch.exp(torch.empty(size).uniform_(math.log(low), math.log(high)))


class S4D(nn.Module):
    """S4D's layer over d_model channels: SSM convolution + D skip, GELU, Linear and GLU."""

    def __init__(
        self, d_model: int, *, causal: bool, d_state: int, init: str, dt_min: float, dt_max: float
    ) -> None:
        super().__init__()
        A = s4d_eigenvalues(init, d_state)  # (M,) M modes
        self.complex = A.is_complex()
        self.scale = 2.0 if self.complex else 1.0
        self.causal = causal
        self.log_dt = nn.Parameter(torch.log(log_uniform(d_model, dt_min, dt_max)))  # (H,)
        self.A_log = nn.Parameter(torch.log(-A.real).repeat(d_model, 1))  # (H, M)
        self.A_imag = nn.Parameter(A.imag.repeat(d_model, 1)) if self.complex else None
        directions = 1 if causal else 2
        C = torch.randn(directions, d_model, A.numel(), dtype=A.dtype)
        self.C = nn.Parameter(torch.view_as_real(C) if self.complex else C)  # (dirs, H, M[, 2])
        self.D = nn.Parameter(torch.randn(d_model))
        self.out_proj = nn.Linear(d_model, 2 * d_model)

    def discretize(self) -> tuple[Tensor, Tensor, Tensor]:
        """ZOH: dt*A (H, M), dB = (exp(dt A) - 1) / A (H, M) and C (dirs, H, M), complex or real."""
        A = -torch.exp(self.A_log)
        if self.A_imag is not None:
            A = torch.complex(A, self.A_imag)
        dtA = torch.exp(self.log_dt)[:, None] * A
        C = torch.view_as_complex(self.C) if self.complex else self.C
        return dtA, torch.expm1(dtA) / A, C

    def readout(self, C: Tensor, h: Tensor) -> Tensor:
        """y = Re(sum over modes of C h), doubled for complex modes (each is a conjugate pair)."""
        return self.scale * (C * h).sum(dim=-1).real

    def kernel(self, length: int) -> tuple[Tensor, Tensor]:
        """K[dir, h, l] = Re(sum_m C dB exp(dt A l)) (doubled if complex) for l < length:
        (dirs, H, length), and dB exp(dt A l) (H, M, L), the Vandermonde matrix (the largest
        tensor), which also carries inputs l steps back into the state."""
        dtA, dB, C = self.discretize()
        positions = torch.arange(length, device=dtA.device, dtype=torch.float32)
        powers = dB[..., None] * torch.exp(dtA[..., None] * positions)  # (H, M, L)
        return self.scale * torch.einsum("dhm,hml->dhl", C, powers).real, powers

    def post(self, y: Tensor) -> Tensor:
        """The layer after the SSM: GELU, then Linear to 2 d_model and GLU (y: (..., H))."""
        return F.glu(self.out_proj(F.gelu(y)), dim=-1)

    def forward(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        """y (B, L, H) and, for a decoder, the state after x: h_L = sum_l dB exp(dt A l) u_{L-1-l}
        from the kernel's own Vandermonde matrix (an encoder's is empty)."""
        length = x.shape[1]
        u = x.to(torch.promote_types(x.dtype, torch.float32))  # float64 stays float64
        u = u if mask is None else u.masked_fill(~mask[..., None], 0.0)
        u = u.transpose(1, 2)  # (B, H, L)
        kernels, powers = self.kernel(length)  # (dirs, H, L), (H, M, L)
        k = kernels[0]  # (H, L): offset j >= 0 at index j
        if not self.causal:  # offset -(j + 1) at index 2L - 1 - j: circularly, the past of 0
            k = F.pad(k, (0, length)) + F.pad(kernels[1].flip(-1), (length, 0))  # (H, 2L)
        n = 2 * length
        y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :length]
        y = y + u * self.D[:, None]  # (B, H, L)
        state = {}
        if self.causal:
            h = torch.einsum("bhl,hml->bhm", u.flip(-1).to(powers.dtype), powers)  # (B, H, M)
            state["ssm"] = torch.view_as_real(h) if self.complex else h
        return self.post(y.transpose(1, 2).to(x.dtype)), state

    def mixing_map(self, x: Tensor, mask: Tensor | None) -> MixingMap:
        """Each channel's Toeplitz matrix, K[t - s] (the backward kernel's for s > t in an
        encoder) plus D on the diagonal, over the masked inputs; ``post`` is ``finish``."""
        length = x.shape[1]
        u = x.to(torch.promote_types(x.dtype, torch.float32))
        u = u if mask is None else u.masked_fill(~mask[..., None], 0.0)
        kernels = self.kernel(length)[0]  # (dirs, H, L)
        positions = torch.arange(length, device=x.device)
        gap = positions[:, None] - positions[None, :]  # t - s
        weights = kernels[0][:, gap.clamp(min=0)] * (gap >= 0)  # (H, L, L)
        if not self.causal:
            weights = weights + kernels[1][:, (-gap - 1).clamp(min=0)] * (gap < 0)
        weights = weights + torch.diag_embed(self.D[:, None].expand(-1, length))
        weights = weights.expand(x.shape[0], -1, -1, -1)
        if mask is not None:
            weights = weights * mask[:, None, None, :]

        def finish(mixed: Tensor) -> Tensor:
            return self.post(mixed[..., 0].transpose(1, 2).to(x.dtype))

        return MixingMap(weights, u.transpose(1, 2)[..., None], finish, "channels")

    def init_state(self, batch_size: int) -> dict[str, Tensor]:
        """The diagonal state (B, H, M), stored as floats (real/imag pairs for complex modes)."""
        shape = (batch_size, *self.C.shape[1:])
        return {"ssm": self.C.new_zeros(shape)}

    def step(self, x_t: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        dtA, dB, C = self.discretize()
        h = torch.view_as_complex(state["ssm"]) if self.complex else state["ssm"]
        u = x_t.to(torch.promote_types(x_t.dtype, torch.float32))  # (B, H)
        h = torch.exp(dtA) * h + dB * u[..., None]  # (B, H, M)
        y = self.readout(C[0], h) + self.D * u
        ssm = torch.view_as_real(h) if self.complex else h
        return self.post(y.to(x_t.dtype)), {"ssm": ssm}

    def state_size(self) -> int:
        return self.C[0].numel()  # H * N: M complex modes are 2M = N floats

    def flops_per_token(self, seq_len: int) -> float:
        """Per channel: the kernel (a complex multiply-add, 8 FLOPs, per mode, direction and
        position: amortised per token), FFT convolution (three real FFTs of 2L points at
        ~2.5 n log2 n FLOPs each and a pointwise complex product per frequency, divided by L),
        the D skip; then the output Linear (d -> 2d) and the GLU product."""
        d = self.A_log.shape[0]
        modes = self.A_log.shape[1]
        directions = self.C.shape[0]
        n = 2 * seq_len
        kernel = directions * modes * (8 if self.complex else 2)
        conv = (3 * 2.5 * n * math.log2(n) + 6 * (seq_len + 1)) / seq_len
        return d * (kernel + conv + 2) + 2 * d * 2 * d + d


class SelectiveSSM(nn.Module):
    """One direction of Mamba's SSM: dt_t, B_t, C_t projected from x_t; A (real) and D learned."""

    def __init__(
        self, d_inner: int, *, d_state: int, dt_rank: int, dt_min: float, dt_max: float
    ) -> None:
        super().__init__()
        self.d_state = d_state
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        dt = log_uniform(d_inner, dt_min, dt_max).clamp(min=1e-4)
        with torch.no_grad():
            bound = dt_rank**-0.5  # Mamba's dt_init="random" with dt_scale = 1
            self.dt_proj.weight.uniform_(-bound, bound)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(bias) = dt
        A = s4d_eigenvalues("real", d_state)
        self.A_log = nn.Parameter(torch.log(-A).repeat(d_inner, 1))  # (E, N)
        self.D = nn.Parameter(torch.ones(d_inner))

    def _selection(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The scan's inputs from x (B, L, E): dt (B, L, E) in float32, zero at pads (a pad
        neither decays nor writes), A (E, N), and B_t, C_t (B, L, N)."""
        dt, B, C = self.x_proj(x).split([self.dt_proj.in_features, self.d_state, self.d_state], -1)
        dt = F.softplus(self.dt_proj(dt)).float()
        if mask is not None:
            dt = dt.masked_fill(~mask[..., None], 0.0)
        return dt, -torch.exp(self.A_log), B, C

    def forward(
        self, x: Tensor, mask: Tensor | None, h: Tensor, chunk_size: int
    ) -> tuple[Tensor, Tensor]:
        """x (B, L, E) -> y (B, L, E) from state h (B, E, N), and the state after x."""
        dt, A, B, C = self._selection(x, mask)
        xf = x.float()
        y, h = selective_scan(xf, dt, A, B.float(), C.float(), h, chunk_size)
        return (y + xf * self.D).to(x.dtype), h

    def mixing_map(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """(B, E, L, L): ``[b, e, t, s]`` = C_t . exp(A (S_t - S_s)) dt_s B_s for s <= t, S the
        running sum of dt, plus D on the diagonal: the scan's selective "attention", y = W x."""
        dt, A, B, C = self._selection(x, mask)
        total = dt.cumsum(1).transpose(1, 2)  # (B, E, L): S_t
        length = x.shape[1]
        reads = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        elapsed = (total[..., :, None] - total[..., None, :]).masked_fill(~reads, 0.0)
        written = dt.transpose(1, 2)[..., None, :]  # (B, E, 1, L): dt_s
        weights = x.new_zeros(x.shape[0], dt.shape[2], length, length, dtype=torch.float32)
        for n in range(self.d_state):  # one state dimension at a time, in place: (B, E, L, L)
            pair = (C[..., n, None] * B[..., None, :, n]).float()[:, None]  # (B, 1, L, L)
            weights += (A[:, n, None, None] * elapsed).exp_().mul_(pair).mul_(written)
        weights = weights * reads + torch.diag_embed(self.D[:, None].expand(-1, length))
        return weights

    def flops_per_token(self) -> float:
        """x_proj, dt_proj, and per (channel, state) 7 FLOPs of scan: dt*A and its exp, dt x B,
        the multiply-add into h and the multiply-add into y; plus the D skip."""
        d_inner, rank = self.dt_proj.out_features, self.dt_proj.in_features
        projections = 2 * d_inner * (rank + 2 * self.d_state) + 2 * rank * d_inner
        return projections + 7 * d_inner * self.d_state + 2 * d_inner


class Mamba(nn.Module):
    """Mamba's block: in_proj, short conv + SiLU, selective SSM (both ways for an encoder), gate."""

    def __init__(
        self,
        d_model: int,
        *,
        causal: bool,
        d_state: int,
        expand: int,
        dt_rank: int,
        dt_min: float,
        dt_max: float,
        conv_kernel: int,
        chunk_size: int,
    ) -> None:
        super().__init__()
        d_inner = expand * d_model
        self.causal = causal
        self.chunk_size = chunk_size
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv = nn.Conv1d(d_inner, d_inner, conv_kernel, groups=d_inner)
        span = conv_kernel - 1
        left = span if causal else span // 2  # centred like ConvMixer's encoder
        self.padding = (left, span - left)
        self.ssm = nn.ModuleList(
            SelectiveSSM(d_inner, d_state=d_state, dt_rank=dt_rank, dt_min=dt_min, dt_max=dt_max)
            for _ in range(1 if causal else 2)
        )
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        """y (B, L, d) and the state after x: the last conv inputs and the scan's last state."""
        x, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, E) each
        if mask is not None:
            x = x.masked_fill(~mask[..., None], 0.0)
        x = x.transpose(1, 2)  # (B, E, L)
        window = last_positions(x, self.conv.weight.shape[-1] - 1)
        x = F.silu(self.conv(F.pad(x, self.padding)).transpose(1, 2))
        h = x.new_zeros(x.shape[0], x.shape[2], self.ssm[0].d_state, dtype=torch.float32)
        y, h_last = self.ssm[0](x, mask, h, self.chunk_size)
        if not self.causal:  # the reversed sequence: pads (dt = 0) come first and leave h = 0
            back = None if mask is None else mask.flip(1)
            y = y + self.ssm[1](x.flip(1), back, h, self.chunk_size)[0].flip(1)
        return self.out_proj(y * F.silu(z)), {"conv": window, "ssm": h_last}

    def mixing_map(self, x: Tensor, mask: Tensor | None) -> MixingMap:
        """Per inner channel, the selective scan's map (both directions' summed for an encoder,
        the backward one flipped) over the short conv's SiLU outputs; the gate and out_proj are
        ``finish``."""
        x, z = self.in_proj(x).chunk(2, dim=-1)
        if mask is not None:
            x = x.masked_fill(~mask[..., None], 0.0)
        x = F.silu(self.conv(F.pad(x.transpose(1, 2), self.padding)).transpose(1, 2))
        weights = self.ssm[0].mixing_map(x, mask)
        if not self.causal:
            back = None if mask is None else mask.flip(1)
            weights = weights + self.ssm[1].mixing_map(x.flip(1), back).flip(-1, -2)
        if mask is not None:
            weights = weights * mask[:, None, None, :]

        def finish(mixed: Tensor) -> Tensor:
            return self.out_proj(mixed[..., 0].transpose(1, 2).to(z.dtype) * F.silu(z))

        return MixingMap(weights, x.float().transpose(1, 2)[..., None], finish, "channels")

    def init_state(self, batch_size: int) -> dict[str, Tensor]:
        """The last conv_kernel - 1 conv inputs (B, E, k - 1) and the SSM state (B, E, N)."""
        weight = self.conv.weight
        d_inner, kernel = weight.shape[0], weight.shape[-1]
        return {
            "conv": weight.new_zeros(batch_size, d_inner, kernel - 1),
            "ssm": weight.new_zeros(batch_size, d_inner, self.ssm[0].d_state),
        }

    def step(self, x_t: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        x, z = self.in_proj(x_t).chunk(2, dim=-1)  # (B, E) each
        window = torch.cat((state["conv"], x[:, :, None]), dim=2)  # (B, E, k), oldest first
        x = F.silu((window * self.conv.weight[:, 0]).sum(dim=-1) + self.conv.bias)
        y, h = self.ssm[0](x[:, None], None, state["ssm"], self.chunk_size)
        return self.out_proj(y[:, 0] * F.silu(z)), {"conv": window[:, :, 1:], "ssm": h}

    def state_size(self) -> int:
        weight = self.conv.weight
        return weight.shape[0] * (weight.shape[-1] - 1 + self.ssm[0].d_state)

    def flops_per_token(self, seq_len: int) -> float:
        """in_proj, conv taps, each direction's SSM, the directions' sum and the gate, out_proj."""
        d_model, d_inner = self.in_proj.in_features, self.conv.weight.shape[0]
        kernel = self.conv.weight.shape[-1]
        ssm = sum(direction.flops_per_token() for direction in self.ssm)
        merge_and_gate = len(self.ssm) * d_inner
        projections = 2 * d_model * 2 * d_inner + 2 * d_inner * d_model
        return projections + 2 * kernel * d_inner + ssm + merge_and_gate


@register_mixer("ssm")
class StateSpaceMixer(TokenMixer):
    """Diagonal state-space model: S4D, or Mamba's selective SSM (selective=true).

    Two architectures behind one name, so the configs are two named presets with their labels:
    ``mixer=mamba`` (conf/mixer/mamba.yaml, mamba_ssm's defaults, also this class's) and
    ``mixer=s4d`` (conf/mixer/s4d.yaml, s4d.py's S4D-Lin with N = 64, i.e. d_state=64).
    selective=true builds :class:`Mamba` (init must be "real"), selective=false :class:`S4D`
    with init "lin", "inv" (complex modes, even d_state) or "real"; S4D's ``a_dt_max_lr`` caps
    the learning rate of A and dt (s4d.py registers them at min(1e-3, lr)). dt_rank "auto" is
    ceil(d_model / 16) as in Mamba. Decoding carries a fixed-size state: S4D's diagonal state,
    or Mamba's SSM state plus the short conv's last conv_kernel - 1 inputs; a step costs the
    same at any position, and ``prefill`` gets the state from one pass over the prompt (the scan's
    last state; for S4D, the kernel's Vandermonde matrix applied to the prompt reversed). See the
    module docstring for the equations and the choices made.
    """

    supports_step = True

    def __init__(
        self,
        d_model: int,
        *,
        causal: bool = True,
        max_len: int | None = None,
        selective: bool = True,
        d_state: int = 16,
        expand: int = 2,
        init: str = "real",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_rank: int | str = "auto",
        conv_kernel: int = 4,
        chunk_size: int = 64,
        a_dt_max_lr: float | None = None,
    ) -> None:
        super().__init__(d_model, causal=causal, max_len=max_len)
        if init not in INITS:
            raise ValueError(f"unknown ssm init {init!r}; choose one of: {', '.join(INITS)}")
        if selective and init != "real":
            raise ValueError(
                f"init={init!r} makes A complex, but the selective scan here is real-valued: "
                "use init=real (S4D-Real, Mamba's choice) or selective=false for S4D-Lin/Inv"
            )
        if d_state < 1 or (init != "real" and d_state % 2):
            raise ValueError(
                f"d_state must be positive, and even for init={init!r} (complex modes come in "
                f"conjugate pairs), got {d_state}"
            )
        if min(expand, conv_kernel, chunk_size) < 1:
            raise ValueError(
                "expand, conv_kernel and chunk_size must be at least 1, got "
                f"{expand}, {conv_kernel} and {chunk_size}"
            )
        if a_dt_max_lr is not None and (selective or not a_dt_max_lr > 0):
            raise ValueError(
                f"a_dt_max_lr={a_dt_max_lr!r}: a positive learning-rate cap for S4D's A and dt "
                "(s4d.py's min(1e-3, lr)); Mamba trains them at the optimiser's rate, so leave it "
                "null with selective=true"
            )
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {dt_min} and {dt_max}")
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        if isinstance(dt_rank, bool) or not isinstance(dt_rank, int) or dt_rank < 1:
            raise ValueError(f"dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
        self.selective = selective
        self.init = init
        if selective:
            self.layer: Mamba | S4D = Mamba(
                d_model,
                causal=causal,
                d_state=d_state,
                expand=expand,
                dt_rank=dt_rank,
                dt_min=dt_min,
                dt_max=dt_max,
                conv_kernel=conv_kernel,
                chunk_size=chunk_size,
            )
            self.no_weight_decay = ("*A_log", "*.D", "*dt_proj.bias")
        else:
            self.layer = S4D(
                d_model, causal=causal, d_state=d_state, init=init, dt_min=dt_min, dt_max=dt_max
            )
            complex_a = ("layer.A_imag",) if init != "real" else ()
            self.no_weight_decay = ("layer.A_log", *complex_a, "layer.log_dt", "layer.D")
            if a_dt_max_lr is not None:
                a_and_dt = ("layer.A_log", *complex_a, "layer.log_dt")
                self.max_lr = dict.fromkeys(a_and_dt, a_dt_max_lr)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        self.check_input(x, mask)
        return self.layer(x, mask)[0]

    def mixing_map(self, x: Tensor, mask: Tensor | None = None) -> MixingMap:
        """Per channel: S4D's Toeplitz kernel, or Mamba's input-dependent scan written as a
        matrix (C_t exp(A (S_t - S_s)) dt_s B_s, the "hidden attention"); D on the diagonal."""
        self.check_input(x, mask)
        return self.layer.mixing_map(x, mask)

    def prefill(self, x: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """One pass over the prompt (FFT convolution or the scan) that also returns the state."""
        self.check_prefill(x)
        y, state = self.layer(x, None)
        return y, {**state, "position": x.shape[1]}

    def init_state(self, batch_size: int) -> dict[str, Any]:
        return {**self.layer.init_state(batch_size), "position": 0}

    def step(self, x_t: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """One token through the recurrence: the same work at every position."""
        position = state["position"]
        self.check_step(position)
        y, layer_state = self.layer.step(x_t, state)
        return y, {**layer_state, "position": position + 1}

    def output_projections(self) -> list[nn.Linear]:
        """S4D's output Linear (halved by its GLU), or Mamba's out_proj."""
        return [self.layer.out_proj]

    def state_size(self, seq_len: int) -> int:
        """Floats of the recurrent state (and Mamba's conv window): the same at every length."""
        return self.layer.state_size()

    def flops_per_token(self, seq_len: int) -> float:
        return float(self.layer.flops_per_token(seq_len))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, selective={self.selective}, init={self.init!r}"
