"""The encoder-decoder: an encoder stack reads the source, a decoder stack writes the target.

    source -> encoder: embed -> [Block(mixer, causal=False)] x N_enc -> norm -> context (B, S, d)
    target -> decoder: embed -> [Block(causal mixer, cross-mixer reading the context)] x N_dec
              -> norm -> head

Both stacks are :class:`~mixerlab.mixers.SequenceModel` s, so either may be any registered mixer
(a hybrid too) with the same channel mixer, norm and positions; the decoder's blocks add a
cross-mixer (:mod:`~mixerlab.mixers.model.cross_mixers`) between the token mixer and the channel
mixer, pre-norm residual like the rest:

    x = x + drop(mixer(norm(x), mask))          # the target so far (causal)
    x = x + drop(cross.read(norm(x), memory))   # the whole source, its padding masked
    x = x + drop(ffn(norm(x)))

Decoding runs the encoder once, makes each cross-mixer's memory of its output once (keys and
values, or linear attention's sums), prefills a target prefix in one pass and steps the decoder's
mixers from there. ``share_embeddings`` gives both stacks one token embedding (one vocabulary),
tied to the decoder's head either way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mixerlab.mixers._contract import count_params
from mixerlab.mixers.model.sequence_model import SequenceModel


class EncoderDecoderModel(nn.Module):
    """A source-to-target model: ``forward(source, target, source_mask, target_mask)`` returns
    the target's next-token logits (B, T, target_vocab) (or at the ``scored`` positions only,
    (N, target_vocab)); ``generate(source, prompt, n)`` continues ``prompt`` reading the
    source."""

    def __init__(
        self,
        source_vocab: int,
        target_vocab: int,
        d_model: int = 256,
        n_encoder_layers: int = 2,
        n_decoder_layers: int = 2,
        *,
        encoder_mixer: str | list = "attention",
        encoder_hparams: dict[str, Any] | None = None,
        decoder_mixer: str | list = "attention",
        decoder_hparams: dict[str, Any] | None = None,
        cross_mixer: str = "attention",
        cross_hparams: dict[str, Any] | None = None,
        max_source_len: int | None = 256,
        max_target_len: int | None = 256,
        share_embeddings: bool = False,
        **common: Any,
    ) -> None:
        """``common``: what both stacks share, as :class:`SequenceModel` takes it (ffn,
        ffn_mult, ffn_hparams, norm, pos, dropout, mixer_init); ``tie_embeddings`` ties the
        decoder's head to its embedding (the encoder's head, never read, is always tied: it
        costs no parameters)."""
        super().__init__()
        tie = common.pop("tie_embeddings", True)
        if share_embeddings and source_vocab != target_vocab:
            raise ValueError(
                f"share_embeddings needs one vocabulary, got source_vocab {source_vocab} and "
                f"target_vocab {target_vocab}; share_embeddings=False keeps two"
            )
        self.encoder = SequenceModel(
            source_vocab,
            d_model,
            n_encoder_layers,
            mixer=encoder_mixer,
            mixer_hparams=encoder_hparams,
            causal=False,
            max_len=max_source_len,
            tie_embeddings=True,
            **common,
        )
        self.decoder = SequenceModel(
            target_vocab,
            d_model,
            n_decoder_layers,
            mixer=decoder_mixer,
            mixer_hparams=decoder_hparams,
            causal=True,
            max_len=max_target_len,
            cross_mixer=cross_mixer,
            cross_hparams=cross_hparams,
            tie_embeddings=tie,
            **common,
        )
        if share_embeddings:
            self.decoder.embed = self.encoder.embed
            if tie:
                self.decoder.head.weight = self.encoder.embed.weight
        self.vocab_size = target_vocab

    def memories(self, source: Tensor, source_mask: Tensor | None = None) -> list[Any]:
        """The encoder's reading of ``source`` (B, S), as each decoder block's cross-mixer keeps
        it: made once per source."""
        return self.decoder.memories(self.encoder.encode(source, source_mask), source_mask)

    def forward(
        self,
        source: Tensor,
        target: Tensor,
        source_mask: Tensor | None = None,
        target_mask: Tensor | None = None,
        scored: Tensor | None = None,
    ) -> Tensor:
        memories = self.memories(source, source_mask)
        return self.decoder(target, target_mask, scored, memories=memories)

    @torch.no_grad()
    def generate(
        self,
        source: Tensor,
        prompt: Tensor,
        max_new_tokens: int,
        source_mask: Tensor | None = None,
        **sampling: Any,
    ) -> Tensor:
        """The target: ``prompt`` (B, T0, at least a start token) and ``max_new_tokens`` more,
        sampled as :meth:`SequenceModel.generate` does (``temperature``, ``top_k``,
        ``generator``), the encoder run once."""
        memories = self.memories(source, source_mask)
        return self.decoder.generate(prompt, max_new_tokens, memories=memories, **sampling)

    @property
    def aux_loss(self) -> Tensor:
        return self.encoder.aux_loss + self.decoder.aux_loss

    # -- accounting ---------------------------------------------------------------------------
    def num_params(self) -> int:
        """Parameters of both stacks, shared embeddings counted once."""
        return count_params(self)

    def flops_per_source_token(self, source_len: int) -> float:
        """Forward FLOPs per source token: the encoder's blocks, and the decoder's cross-mixers
        making their memories of it."""
        encoder = self.encoder.blocks_flops_per_token(source_len)
        return encoder + self.decoder.memory_flops_per_source_token()

    def flops_per_target_token(self, target_len: int, source_len: int) -> float:
        """Forward FLOPs per target token: the decoder's blocks (reading a ``source_len``
        source) and its head."""
        return self.decoder.flops_per_token(target_len, source_len)

    def flops_per_token(self, target_len: int, source_len: int | None = None) -> float:
        """Forward FLOPs per token read or written: a ``source_len`` source (default: the
        longest) and a ``target_len`` target cost this much times ``source_len + target_len``,
        the unit in which a decoder-only model reading the source as its prefix is counted."""
        source_len = self._source_len(source_len)
        source = source_len * self.flops_per_source_token(source_len)
        target = target_len * self.flops_per_target_token(target_len, source_len)
        return (source + target) / (source_len + target_len)

    def state_size(self, target_len: int, source_len: int | None = None) -> int | None:
        """Decoding state per sequence: the decoder's mixers' state after ``target_len`` tokens
        plus the cross-mixers' memories of a ``source_len`` source (default: the longest; None
        where a mixer does not report)."""
        return self.decoder.state_size(target_len, self._source_len(source_len))

    @property
    def max_len(self) -> int | None:
        """The longest target the decoder takes."""
        return self.decoder.max_len

    @property
    def max_source_len(self) -> int | None:
        """The longest source the encoder takes."""
        return self.encoder.max_len

    def _source_len(self, source_len: int | None) -> int:
        if source_len is not None:
            return source_len
        if self.max_source_len is None:
            raise ValueError("the encoder has no max_len: give source_len")
        return self.max_source_len
