"""BaseConv (Arora et al. 2023, "Zoology", arXiv 2312.04927): a convolution gated by a linear
projection of the same input, with a skip, and no other projection.

Zoology's ``BaseConv.forward`` on u (B, L, d_model), its ``zoology/mixers/base_conv.py``:

    y = conv(u) * (W u + b) + u                    (``u_conv * u_proj``, then ``+ u``)

``W u + b`` is ``self.projection`` (one d x d Linear); there is no output projection.
``conv`` is one of Zoology's three convolutions (``zoology/mixers/convolution.py``):

- ``kernel_size`` k >= 1 (``ShortConvolution``): a depthwise causal convolution of k taps with a
  bias, conv(u)[t] = b_c + sum_{j<k} w_c[j] u[t - j] (``nn.Conv1d`` with ``groups=d_model``).
- ``kernel_size=-1``: a long convolution over the whole sequence, by FFT, that adds its input
  back as Zoology's ``fft_conv`` does (``y + u``): conv(u)[t] = u[t] + sum_{s<=t} h_c[s] u[t - s].
  Its filter h (d_model, max_len) is

  - implicit (``implicit=True``, Zoology's default ``ImplicitLongConvolution``): an MLP over
    positional features, h[:, s] = Linear(16 -> d)(ReLU(Linear(3 -> 16)(PE(s)))), with PE
    Zoology's ``PositionalEmbedding`` of 3 features: [s / (max_len - 1), cos(f w), -sin(f w)],
    w = 2 pi s / max_len, f = 1e-4 (:func:`mixerlab.mixers.hyena.positional_features`);
  - explicit (``implicit=False``, ``LongConvolution``): a (d_model, max_len) parameter, every
    tap N(0, 1) as Zoology draws it.

Encoder (causal=False), which Zoology does not have: the short kernel is centred (k odd: (k-1)/2
positions on each side; k even: the extra one on the right, like PyTorch's padding="same"), and
the long filter is two-sided, offsets -(L-1)..L-1: the implicit MLP evaluated at signed offsets
(s / (max_len - 1) and the sine are odd in s, so it tells the two directions apart), the
explicit filter a (d_model, 2 max_len - 1) parameter. The skip ``+ u`` inside the long
convolution and the outer ``+ u`` stay as they are.

Where this differs from Zoology:

- Init: PyTorch's defaults for the projection, the short Conv1d and the filter MLP's Linears
  (uniform in +-1/sqrt(fan_in), biases too); Zoology's model redraws every Linear, the
  projection and the filter MLP included, from N(0, 0.02) with zero biases, which starts the
  implicit filter and the gate near 0 (y ~ u). ``model.mixer_init=zoology`` gives Zoology's
  (:mod:`mixerlab.mixers.model.sequence_model`); the other choices keep this init, as this mixer
  has no output projection to rescale.
- A sequence shorter than max_len reads the long filter's taps 0..L-1. At L = max_len (Zoology's
  Figure 2) this equals Zoology; Zoology's explicit filter at L < max_len takes an FFT of up to
  2L of its taps, so taps beyond L wrap onto later positions.
- Zoology's ``use_act`` (SiLU on both factors) and per-layer kernel lists are not options: a
  hybrid's pattern gives each layer its own kernel_size (conf/mixer/baseconv.yaml).
- Decoding state (``state_size``): the last k - 1 inputs (Zoology's ``ShortConvolution`` reports
  k) or, for the long filter, every input so far (as Zoology's d_model * L).

Padding: padded positions are zeroed before anything else, exactly like the zero padding past
the end of a shorter sequence, so they cannot reach real positions. The filter MLP runs once per
forward for the whole batch; no weight decay exemptions (Zoology decays every parameter).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixerlab.mixers._contract import TokenMixer, register_mixer
from mixerlab.mixers.conv import last_positions
from mixerlab.mixers.hyena import positional_features
from mixerlab.mixers.kernels.fft_conv import fft_conv, fft_conv_flops
from mixerlab.mixers.mixing_map import MixingMap, toeplitz

FILTER_EMB_DIM = 3  # Zoology's ImplicitLongConvolution: d_emb (t and one cosine-sine pair)
FILTER_HIDDEN = 16  # and d_hidden, the MLP's width


@register_mixer("base_conv")
class BaseConvMixer(TokenMixer):
    """Zoology's BaseConv: a short or long convolution gated by a Linear of the input, plus a skip.

    y = conv(u) * (W u + b) + u, with no output projection.

    ``kernel_size``: k >= 1 taps of a depthwise short convolution, or -1 for a long convolution
    over the whole sequence (by FFT, needs max_len), whose filter is an MLP over positions
    (``implicit=True``, Zoology's default) or a free (d_model, max_len) parameter
    (``implicit=False``).
    """

    supports_step = True

    def __init__(
        self,
        d_model: int,
        *,
        causal: bool = True,
        max_len: int | None = None,
        kernel_size: int = 3,
        implicit: bool = True,
    ) -> None:
        super().__init__(d_model, causal=causal, max_len=max_len)
        self.global_mixing = kernel_size == -1
        if self.global_mixing and (max_len is None or max_len <= 0):
            raise ValueError(
                f"base_conv with kernel_size=-1 (a filter as long as the sequence) needs a "
                f"positive max_len, got {max_len!r}; pass max_len=<longest sequence length>"
            )
        if not self.global_mixing and kernel_size < 1:
            raise ValueError(
                f"base_conv's kernel_size must be -1 (long) or at least 1, got {kernel_size}"
            )
        if not self.global_mixing and not implicit:
            raise ValueError(
                "implicit=False (an explicit long filter) needs kernel_size=-1; a short kernel "
                f"of {kernel_size} taps is always explicit"
            )
        self.kernel_size = kernel_size
        self.implicit = implicit
        self.projection = nn.Linear(d_model, d_model)
        if not self.global_mixing:
            self.conv = nn.Conv1d(d_model, d_model, kernel_size, groups=d_model)
            span = kernel_size - 1
            self.padding = (span, 0) if causal else (span // 2, span - span // 2)
        elif implicit:
            self.filter_mlp = nn.Sequential(
                nn.Linear(FILTER_EMB_DIM, FILTER_HIDDEN),
                nn.ReLU(),
                nn.Linear(FILTER_HIDDEN, d_model),
            )
        else:
            taps = max_len if causal else 2 * max_len - 1
            self.filter = nn.Parameter(torch.randn(d_model, taps))  # offset order, 0 first

    def long_filter(self, offsets: Tensor) -> Tensor:
        """The long filter's taps at integer ``offsets`` (taps,) -> (d_model, taps)."""
        if self.implicit:
            weight = self.filter_mlp[0].weight
            features = positional_features(offsets, self.max_len, FILTER_EMB_DIM, weight.dtype)
            return self.filter_mlp(features).T
        return self.filter[:, offsets if self.causal else offsets + self.max_len - 1]

    def _conv(self, u: Tensor) -> Tensor:
        """conv(u) on u (B, d, L): the short kernel, or the long filter by FFT plus u."""
        if not self.global_mixing:
            return self.conv(F.pad(u, self.padding))
        length = u.shape[-1]
        if self.causal:
            offsets = torch.arange(length, device=u.device)
        else:
            offsets = torch.arange(1 - length, length, device=u.device)
        return fft_conv(u, self.long_filter(offsets), causal=self.causal) + u

    def _base_conv(self, u: Tensor) -> Tensor:
        """conv(u) * (W u + b) + u on u (B, L, d)."""
        return self._conv(u.transpose(1, 2)).transpose(1, 2) * self.projection(u) + u

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        self.check_input(x, mask)
        u = x if mask is None else x.masked_fill(~mask[..., None], 0.0)
        return self._base_conv(u)

    def mixing_map(self, x: Tensor, mask: Tensor | None = None) -> MixingMap:
        """Each channel's matrix of conv(u) * (W u + b) + u: the convolution's Toeplitz matrix
        (the long filter's plus the identity it adds) with its rows scaled by the projection of
        this input, plus the skip's identity; the short conv's bias times the projection is
        ``finish``'s."""
        self.check_input(x, mask)
        u = x if mask is None else x.masked_fill(~mask[..., None], 0.0)
        length = x.shape[1]
        gate = self.projection(u).transpose(1, 2)  # (B, d, L): the rows' scale
        if self.global_mixing:
            first = 0 if self.causal else 1 - length
            taps = self.long_filter(torch.arange(first, length, device=x.device))
            matrix = toeplitz(taps, length, first) + torch.eye(length, device=x.device)
            bias = None
        else:  # F.conv1d: tap j at offset left - j
            span = self.kernel_size - 1
            matrix = toeplitz(self.conv.weight[:, 0].flip(-1), length, self.padding[0] - span)
            bias = self.conv.bias
        identity = torch.eye(length, device=x.device)
        weights = gate[..., :, None] * matrix + identity
        if mask is not None:
            weights = weights * mask[:, None, None, :]

        def finish(mixed: Tensor) -> Tensor:
            out = mixed[..., 0]
            return (out if bias is None else out + bias[:, None] * gate).transpose(1, 2)

        return MixingMap(weights, u.transpose(1, 2)[..., None], finish, "channels")

    def _held(self, position: int) -> int:
        """How many past inputs the decoding state holds after ``position`` of them."""
        return position if self.global_mixing else self.kernel_size - 1

    def prefill(self, x: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """One forward over the prompt; the state is its last k - 1 inputs (all, if long)."""
        self.check_prefill(x)
        held = last_positions(x.transpose(1, 2), self._held(x.shape[1]))
        return self._base_conv(x), {"inputs": held, "position": x.shape[1]}

    def init_state(self, batch_size: int) -> dict[str, Any]:
        """The last k - 1 inputs, zeros before the start like the causal left padding (long:
        every input so far, none yet): (B, d, k - 1) or (B, d, 0)."""
        zeros = self.projection.weight.new_zeros(batch_size, self.d_model, self._held(0))
        return {"inputs": zeros, "position": 0}

    def step(self, x_t: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """conv(u)[t] from the held inputs and x_t, newest last, against the taps oldest first."""
        position = state["position"]
        self.check_step(position)
        window = torch.cat((state["inputs"], x_t[:, :, None]), dim=2)  # (B, d, held + 1)
        if self.global_mixing:
            taps = self.long_filter(torch.arange(position, -1, -1, device=x_t.device))
            conv = (window * taps).sum(dim=-1) + x_t
        else:
            conv = (window * self.conv.weight[:, 0]).sum(dim=-1) + self.conv.bias
        held = window[:, :, window.shape[2] - self._held(position + 1) :]
        y = conv * self.projection(x_t) + x_t
        return y, {"inputs": held, "position": position + 1}

    def state_size(self, seq_len: int) -> int:
        """Short: the last k - 1 inputs, the same at every length. Long: every input so far,
        growing with the length like a KV cache."""
        return self.d_model * self._held(seq_len)

    def flops_per_token(self, seq_len: int) -> float:
        """The projection 2 d^2, the convolution (short: 2 k d; long:
        :func:`~mixerlab.mixers.kernels.fft_conv.fft_conv_flops`, O(d log L), and its skip d),
        the gate and the skip (d each). The filter MLP runs once per forward for the whole batch
        (its cost depends on L and the parameters, not on the tokens), so it is not counted."""
        d = self.d_model
        conv = fft_conv_flops(d, seq_len) + d if self.global_mixing else 2 * self.kernel_size * d
        return 2 * d * d + conv + 2 * d

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel_size={self.kernel_size}, implicit={self.implicit}"
