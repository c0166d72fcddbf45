"""Linear attention: softmax replaced by a feature map, optionally with a decaying state.

Katharopoulos et al. 2020 (arXiv 2006.16236) write attention with a kernel phi:

    o_t = sum_{s<=t} (phi(q_t) . phi(k_s)) v_s / sum_{s<=t} phi(q_t) . phi(k_s)

so a decoder carries S_t = sum_s phi(k_s) v_s^T (Dphi x Dv) and z_t = sum_s phi(k_s) (Dphi) instead
of a KV cache. Decay multiplies the state before each update, S_t = diag(alpha_t) S_{t-1} +
phi(k_t) v_t^T, with alpha per head and key dimension:

- ``decay="none"``: alpha = 1 (Katharopoulos).
- ``decay="fixed"``: one rate per head, gamma_h = 1 - 2^(-5-h) (RetNet, arXiv 2307.08621, sec. 2.2).
- ``decay="gated"``: alpha_t = sigmoid(W x_t + b)^(1/tau), per head and feature dimension, with
  W = W_up W_down of rank 16 and tau = 16 (GLA, arXiv 2312.06635, sec. 4). GLA gates its raw
  key dimension, which is ``feature_map="identity"`` here; with another map the gate acts on the
  Dphi rows of the state, after the feature map.

Feature maps, on per-head q, k of width ``feature_dim``: ``identity`` (phi(x) = x: RetNet and GLA
have no feature map), ``elu`` (elu(x) + 1, Katharopoulos), ``relu``, and ``taylor`` (Based, arXiv
2402.18668): with q, k scaled by feature_dim^(-1/4), phi(x) = [1, x, vec(x x^T) / sqrt(2)], so
phi(q).phi(k) = 1 + s + s^2 / 2 with s = q.k / sqrt(feature_dim), Based's scaling. The full outer
product is kept (Dphi = 1 + D + D^2, the symmetric half would do with D(D+1)/2 + D + 1 but needs
an index gather).

What follows the recurrence is where the papers differ:

- ``normalize="sum"`` divides by the (decayed) normaliser phi(q_t) . z_t, as Katharopoulos and
  Based do; z rides along as an extra value column of ones, so S and z are one state
  (Dphi x (Dv + 1)). It needs phi >= 0, so not with ``identity``.
- RetNet (sec. 2.2) and GLA (sec. 4) drop the denominator and normalise each head's o_t
  instead, which also makes o_t invariant to the numerator's growth with length (and to
  RetNet's 1/sqrt(d) scaling and its score normalisations, sec. 2.2, which this module leaves
  out): ``normalize="group"`` is RetNet's GroupNorm with one group per head, (o - mean) /
  sqrt(var + eps) * gain + bias over the head's Dv channels; ``normalize="rms"`` is
  o / sqrt(mean(o^2) + eps) * gain, the RMSNorm that the released code uses (torchscale's
  MultiScaleRetention without a gain, flash-linear-attention's GLA with one gain shared by the
  heads; here each head has its own gain, GroupNorm's per-channel affine). eps = 1e-5.
- ``output_gate="swish"``: RetNet's and GLA's gate, y = (swish(x W_G) * norm(o)) W_O with W_G a
  (d_model x d_model) Linear without a bias (as torchscale and fla), the heads concatenated
  before the product; ``none`` projects norm(o) directly (Katharopoulos, Based).

Training runs the chunked form of :mod:`mixerlab.mixers.kernels.chunked_linear_attention`:
parallel within chunks of ``chunk_size`` positions, a loop over chunks, decays in log space.
Taylor + gated is heavy (Dphi = 273 at feature_dim 16, each pairwise decay that wide): neither
paper combines the two.

Encoder: with no decay, every real position reads the global sums over real keys. With decay, a
causal pass and the same pass over the reversed sequence are summed, the diagonal (s = t) counted
once; a pair (t, s > t) is decayed by alpha_t ... alpha_{s-1}. Padded keys get phi(k) = 0, so they
add nothing; right padding sits after every real position in the causal pass and before every
real position (where the state is still zero) in the reversed one, so padded gates decay nothing.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixerlab.mixers._contract import TokenMixer, register_mixer
from mixerlab.mixers.kernels.chunked_linear_attention import SUB_CHUNK, chunked_causal
from mixerlab.mixers.mixing_map import MixingMap

FEATURE_MAPS = ("identity", "elu", "relu", "taylor")
DECAYS = ("none", "fixed", "gated")
NORMALIZERS = ("sum", "rms", "group")
OUTPUT_GATES = ("none", "swish")
GATE_RANK = 16  # GLA's low rank of the gate projection
GATE_TEMPERATURE = 16.0  # GLA's tau: alpha = sigmoid(.)^(1/tau) starts close to 1
EPS = 1e-6  # added to the normaliser: relu features can make it exactly 0
NORM_EPS = 1e-5  # of the per-head norms (fla's GLA and PyTorch's GroupNorm use 1e-5)


def feature_size(feature_map: str, feature_dim: int) -> int:
    """Dphi, the width of phi(q) for a per-head q of width ``feature_dim``."""
    return 1 + feature_dim + feature_dim**2 if feature_map == "taylor" else feature_dim


def decayed_scores(q: Tensor, k: Tensor, log_alpha: Tensor | None) -> Tensor:
    """The causal map (B, H, L, L) of the recurrence: sum_f q_tf k_sf prod_{s<r<=t} alpha_rf for
    s <= t, one feature at a time (a gated decay differs by feature)."""
    length = q.shape[2]
    reads = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    if log_alpha is None:
        return (q @ k.mT) * reads
    total = log_alpha.cumsum(dim=2)  # (B, H, L, 1 or Dphi)
    weights = q.new_zeros(*q.shape[:3], length)
    for f in range(q.shape[-1]):
        column = min(f, total.shape[-1] - 1)  # a per-head decay has one column
        elapsed = total[..., :, None, column] - total[..., None, :, column]  # (B, H, t, s)
        decay = torch.exp(elapsed.masked_fill(~reads, 0.0))
        weights += q[..., :, None, f] * k[..., None, :, f] * decay
    return weights * reads


@register_mixer("linear_attention")
class LinearAttention(TokenMixer):
    """Linear attention with a feature map and optional decay (Katharopoulos, RetNet, GLA, Based).

    One fused Linear makes q and k (n_heads x feature_dim each) and v (d_model, split over heads);
    the feature map turns q, k into phi(q), phi(k); the state sums phi(k) v^T (decayed if asked);
    each head's output is divided by its normaliser or normalised, optionally gated, and an
    output Linear merges the heads. Initialisation: PyTorch's Linear defaults, also for the decay
    gate (its bias near 0 gives alpha = sigmoid(0)^(1/16) ~ 0.96 per step, GLA's slow start) and
    the output gate. Biases and the norm's gain and bias are exempt from weight decay by the
    optimiser's rule for vectors, so ``no_weight_decay`` stays empty; the fixed decay rates are
    computed, not trained.
    """

    supports_step = True

    def __init__(
        self,
        d_model: int,
        *,
        causal: bool = True,
        max_len: int | None = None,
        n_heads: int = 4,
        feature_map: str = "elu",
        feature_dim: int = 16,
        decay: str = "none",
        normalize: str = "sum",
        output_gate: str = "none",
        chunk_size: int = 64,
    ) -> None:
        super().__init__(d_model, causal=causal, max_len=max_len)
        for option, value, choices in (
            ("feature_map", feature_map, FEATURE_MAPS),
            ("decay", decay, DECAYS),
            ("normalize", normalize, NORMALIZERS),
            ("output_gate", output_gate, OUTPUT_GATES),
        ):
            if value not in choices:
                raise ValueError(f"unknown {option} {value!r}; choose one of: {', '.join(choices)}")
        if feature_map == "identity" and normalize == "sum":
            raise ValueError(
                "feature_map 'identity' can make phi(q).z zero or negative, so it cannot divide "
                "by it (normalize 'sum'); normalise per head as RetNet and GLA do: normalize "
                "'rms' or 'group'"
            )
        if n_heads <= 0 or d_model % n_heads:
            raise ValueError(
                f"d_model {d_model} must be divisible by n_heads {n_heads}; "
                "pick n_heads from the divisors of d_model"
            )
        if feature_dim < 1 or chunk_size < 1:
            raise ValueError(
                f"feature_dim and chunk_size must be at least 1, got {feature_dim} and {chunk_size}"
            )
        self.n_heads = n_heads
        self.feature_map = feature_map
        self.feature_dim = feature_dim
        self.decay = decay
        self.normalize = normalize
        self.output_gate = output_gate
        self.chunk_size = chunk_size
        self.head_dim = d_model // n_heads  # Dv
        self.phi_dim = feature_size(feature_map, feature_dim)  # Dphi
        # Dv plus the column of ones that carries the normaliser z when dividing by it.
        self.value_dim = self.head_dim + (normalize == "sum")
        self.qkv = nn.Linear(d_model, 2 * n_heads * feature_dim + d_model)
        self.out = nn.Linear(d_model, d_model)
        if decay == "gated":
            self.gate_down = nn.Linear(d_model, GATE_RANK, bias=False)
            self.gate_up = nn.Linear(GATE_RANK, n_heads * self.phi_dim)
        if normalize != "sum":  # per head and channel, as GroupNorm's affine
            self.norm_weight = nn.Parameter(torch.ones(n_heads, 1, self.head_dim))
        if normalize == "group":
            self.norm_bias = nn.Parameter(torch.zeros(n_heads, 1, self.head_dim))
        if output_gate == "swish":
            self.out_gate = nn.Linear(d_model, d_model, bias=False)  # W_G

    def log_gamma(self) -> Tensor:
        """RetNet's fixed decay rates, log gamma_h = log(1 - 2^(-5-h)) for h = 0 .. n_heads - 1,
        computed in the weights' dtype: 2^(-5-h) is exact in it and log1p of it accurate."""
        weight = self.qkv.weight
        heads = torch.arange(self.n_heads, dtype=weight.dtype, device=weight.device)
        return torch.log1p(-torch.exp2(-5.0 - heads))

    def _features(self, x: Tensor) -> Tensor:
        """phi over the last dimension: (..., feature_dim) -> (..., Dphi)."""
        if self.feature_map == "identity":
            return x
        if self.feature_map == "elu":
            return F.elu(x) + 1
        if self.feature_map == "relu":
            return F.relu(x)
        x = x * self.feature_dim**-0.25  # so that phi(q).phi(k) = 1 + s + s^2/2, s = q.k/sqrt(D)
        square = (x[..., :, None] * x[..., None, :]).flatten(-2) / math.sqrt(2)
        return torch.cat((torch.ones_like(x[..., :1]), x, square), dim=-1)

    def _project(
        self, x: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """x (B, L, d) -> phi(q), phi(k) (B, H, L, Dphi), v (B, H, L, Dv'), log alpha.

        phi(k) is zeroed at padded positions; v gets the column of ones when normalize="sum";
        log alpha is None (no decay), (B, H, L, 1) or (B, H, L, Dphi).
        """
        batch, length, _ = x.shape
        heads, width = self.n_heads, self.n_heads * self.feature_dim
        q, k, v = self.qkv(x).split((width, width, self.d_model), dim=-1)
        q, k = (self._features(t.view(batch, length, heads, -1).transpose(1, 2)) for t in (q, k))
        v = v.view(batch, length, heads, self.head_dim).transpose(1, 2)
        if self.normalize == "sum":
            v = torch.cat((v, torch.ones_like(v[..., :1])), dim=-1)
        if mask is not None:
            k = k * mask[:, None, :, None]
        log_alpha = None
        if self.decay == "fixed":
            log_alpha = self.log_gamma().view(1, heads, 1, 1).expand(batch, -1, length, -1)
        elif self.decay == "gated":
            logits = self.gate_up(self.gate_down(x)).view(batch, length, heads, self.phi_dim)
            log_alpha = F.logsigmoid(logits).transpose(1, 2) / GATE_TEMPERATURE
        return q, k, v, log_alpha

    def _output(self, o: Tensor, x: Tensor) -> Tensor:
        """Normalise o (B, H, L, Dv') per head, merge heads -> (B, L, d), gate by x (B, L, d)
        if asked, and project."""
        if self.normalize == "sum":
            o = o[..., :-1] / (o[..., -1:] + EPS)
        elif self.normalize == "rms":
            o = F.rms_norm(o, (self.head_dim,), eps=NORM_EPS) * self.norm_weight
        else:
            o = F.layer_norm(o, (self.head_dim,), eps=NORM_EPS) * self.norm_weight + self.norm_bias
        batch, _, length, _ = o.shape
        o = o.transpose(1, 2).reshape(batch, length, self.d_model)
        if self.output_gate == "swish":
            o = F.silu(self.out_gate(x)) * o
        return self.out(o)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        self.check_input(x, mask)
        q, k, v, log_alpha = self._project(x, mask)
        if self.causal:
            return self._output(chunked_causal(q, k, v, log_alpha, self.chunk_size)[0], x)
        if log_alpha is None:  # every real key, undecayed: one global state
            return self._output(q @ (k.mT @ v), x)  # (B, H, L, Dphi) @ (B, H, Dphi, Dv')
        forward = chunked_causal(q, k, v, log_alpha, self.chunk_size)[0]
        flipped = (t.flip(2) for t in (q, k, v, log_alpha))
        backward = chunked_causal(*flipped, self.chunk_size)[0].flip(2)
        diagonal = (q * k).sum(dim=-1, keepdim=True) * v  # s = t, in both passes
        return self._output(forward + backward - diagonal, x)

    def mixing_map(self, x: Tensor, mask: Tensor | None = None) -> MixingMap:
        """Each head's phi(q_t) . phi(k_s), decayed by the gates between s and t (an encoder's
        pairs s > t by those from t to s - 1, the diagonal once); ``finish`` is what follows the
        recurrence (the normaliser of ``normalize="sum"``, whose column of ones rides in the
        values, the per-head norm, the gate, the output projection)."""
        self.check_input(x, mask)
        q, k, v, log_alpha = self._project(x, mask)
        if self.causal:
            weights = decayed_scores(q, k, log_alpha)
        elif log_alpha is None:
            weights = q @ k.mT
        else:
            flipped = decayed_scores(q.flip(2), k.flip(2), log_alpha.flip(2)).flip(-1, -2)
            diagonal = torch.diag_embed((q * k).sum(dim=-1))
            weights = decayed_scores(q, k, log_alpha) + flipped - diagonal
        return MixingMap(weights, v, lambda mixed: self._output(mixed, x), "heads")

    def init_state(self, batch_size: int) -> dict[str, Any]:
        """S (B, H, Dphi, Dv'), zeros; with normalize="sum" its last column is z."""
        weight = self.qkv.weight
        shape = (batch_size, self.n_heads, self.phi_dim, self.value_dim)
        return {"S": weight.new_zeros(shape), "position": 0}

    def prefill(self, x: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """The chunked forward over the prompt, which also yields S (and z) after it."""
        self.check_prefill(x)
        o, S = chunked_causal(*self._project(x, None), self.chunk_size)
        return self._output(o, x), {"S": S, "position": x.shape[1]}

    def step(self, x_t: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """S = diag(alpha_t) S + phi(k_t) v_t^T, o_t = phi(q_t) S: the same cost at any position."""
        self.check_step(state["position"])
        x = x_t[:, None, :]
        q, k, v, log_alpha = self._project(x, None)  # (B, H, 1, .)
        decayed = state["S"] if log_alpha is None else log_alpha.exp().mT * state["S"]
        S = decayed + k.mT @ v  # (B, H, Dphi, Dv')
        return self._output(q @ S, x)[:, 0], {"S": S, "position": state["position"] + 1}

    def state_size(self, seq_len: int) -> int:
        """S (and z): n_heads x Dphi x Dv' floats, whatever the length."""
        return self.n_heads * self.phi_dim * self.value_dim

    def output_projections(self) -> list[nn.Linear]:
        return [self.out]

    def flops_per_token(self, seq_len: int) -> float:
        """Projections, feature maps and the chunk form, per token (multiply-add = 2).

        Projections: 2 d (2 H D + d) for q, k, v, 2 d^2 out, 2 d r + 2 r H Dphi for a gate of
        rank r and 2 d^2 for the output gate's W_G. Feature maps: H Dphi per q and per k. Per
        head, with C = min(chunk_size, seq_len) and Dv' = Dv (+ 1 for the normaliser), the causal
        chunk form computes C scores of width Dphi and C weighted values of width Dv'
        (2 C (Dphi + Dv')), reads the state entering its chunk (2 Dphi Dv') and adds to the
        chunk's state (2 Dphi Dv'). Per-dimension decay runs that form over sub-chunks of
        c = min(8, C), weighing each of the c x Dphi products once more (2 c Dphi), plus the
        chunks' states above them when C > c (4 Dphi Dv'). An encoder with decay runs two causal
        passes; without decay it builds and reads one global state (4 Dphi Dv').
        Elementwise terms of order Dv (normalising, gating, exp of decays) are left out.
        """
        d, heads, phi, dv = self.d_model, self.n_heads, self.phi_dim, self.value_dim
        flops = 2 * d * (2 * heads * self.feature_dim + d) + 2 * d * d + 2 * heads * phi
        if self.decay == "gated":
            flops += 2 * d * GATE_RANK + 2 * GATE_RANK * heads * phi
        if self.output_gate == "swish":
            flops += 2 * d * d
        chunk = min(self.chunk_size, seq_len)
        if self.decay == "gated":  # the chunk form over sub-chunks, plus the chunks' states
            sub = min(SUB_CHUNK, chunk)
            per_head = 2 * sub * (2 * phi + dv) + 4 * phi * dv * (1 + (chunk > sub))
        else:
            per_head = 2 * chunk * (phi + dv) + 4 * phi * dv
        if not self.causal:
            per_head = 2 * per_head if self.decay != "none" else 4 * phi * dv
        return float(flops + heads * per_head)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, n_heads={self.n_heads}, feature_map={self.feature_map}, "
            f"feature_dim={self.feature_dim}, decay={self.decay}, normalize={self.normalize}, "
            f"output_gate={self.output_gate}, chunk_size={self.chunk_size}"
        )
