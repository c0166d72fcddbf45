"""Reading every position's output from the last position's state: MAD's compression read-out.

MAD's compression task (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid
Architectures") asks a model to store a whole sequence in one state and read it back. MAD's
``AutoEncoder`` (mad/model/auto_encoder.py) runs the encoder layers, takes the residual stream at
the last position, adds a fixed sinusoidal code of each output position to it, and decodes every
position through a non-expanding MLP (norm, Linear, GELU, norm, Linear, GELU) and a normed
unembedding. :class:`LastStateDecoder` is that decoder, placed between a
:class:`~mixerlab.mixers.SequenceModel`'s blocks and its final norm and head, so any token mixer
is the encoder and the rest of the model is the one every task uses.

What ours does differently: the last position is the last *real* one (padding is never read);
the position code is the model's sinusoidal table (Vaswani et al.: sines and cosines interleaved,
frequencies 10000^(-2i/d)) where MAD's is fairseq's (all sines, then all cosines, frequencies
10000^(-i/(d/2 - 1))): the same kind of fixed code, laid out and spaced a little differently;
the norms are the model's ``norm`` (MAD's benchmark: RMSNorm) and the unembedding is the model's
final norm and head (tied to the embedding when ``tie_embeddings``; MAD's is not).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mixerlab.mixers.model.blocks import make_norm
from mixerlab.mixers.model.positions import sinusoidal_table

__all__ = ["LastStateDecoder"]


class LastStateDecoder(nn.Module):
    """Every output position decoded from the last real position's state plus that position's
    sinusoidal code, through MAD's two-layer MLP: the sequence must survive in one state."""

    def __init__(self, d_model: int, max_len: int, norm: str) -> None:
        super().__init__()
        self.d_model = d_model
        self.register_buffer("pos_table", sinusoidal_table(max_len, d_model), persistent=False)
        self.mlp = nn.Sequential(
            make_norm(norm, d_model),
            nn.Linear(d_model, d_model),
            nn.GELU(),
            make_norm(norm, d_model),
            nn.Linear(d_model, d_model),
            nn.GELU(),
        )

    def forward(self, states: Tensor, mask: Tensor | None, scored: Tensor | None) -> Tensor:
        """States (B, L, d) -> decoded (B, L, d), or (N, d) at the True positions of the bool
        (B, L) ``scored`` in row-major order (the head then runs only where a loss reads)."""
        batch, length = states.shape[:2]
        if mask is None:
            last = torch.full((batch,), length - 1, device=states.device)
        else:  # right padding: the last real position; an all-padding row reads position 0
            last = (mask.sum(dim=1) - 1).clamp_min(0)
        summary = states[torch.arange(batch, device=states.device), last]  # (B, d)
        if scored is None:
            return self.mlp(summary[:, None] + self.pos_table[:length])
        rows, positions = scored.nonzero(as_tuple=True)
        return self.mlp(summary[rows] + self.pos_table[positions])

    def flops_per_token(self) -> float:
        """Forward FLOPs per decoded position: the MLP's two d x d matrices."""
        return 2.0 * 2 * self.d_model * self.d_model
