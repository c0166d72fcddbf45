"""The sequence model: ``embed -> [Block(token mixer, channel mixer)] x N -> norm -> head``.

Everything but the token mixer is fixed by the config, so an ablation swaps exactly one thing
(MetaFormer, Yu et al. 2022). A block is pre-norm residual:

    x = x + drop(mixer(norm(x), mask))      # moves information across positions
    x = x + drop(ffn(norm(x)))              # works on each position alone (mlp, glu, moe, none)

Init scheme (GPT-2 style, Radford et al. 2019): token and position embeddings and every Linear the
model owns (channel mixers, heads) are drawn from N(0, 0.02) with zero biases, and the last Linear
of each channel mixer (every expert's, for MoE) is then scaled by 1/sqrt(2 * n_layers). A token
mixer keeps its own initialisation, because much of it carries meaning (gMLP's spatial weights
start near zero, S4D's and Mamba's decays follow their papers; each mixer documents it), except
for its output projections (``TokenMixer.output_projections``, the Linears that write into the
residual stream), which ``mixer_init`` chooses:

- ``depth_scaled`` (the default): N(0, 0.02 / sqrt(2 * n_layers)) and zero biases, the channel
  mixers' last layers' init, so no mixer starts with a louder or quieter residual branch than
  another merely by its library's default init.
- ``mamba``: mamba_ssm's ``_init_weights`` (``rescale_prenorm_residual``): PyTorch's default
  Kaiming-uniform draw (a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))) divided by
  sqrt(r * n_layers), where r, the residual branches per layer, is 1 for a model without channel
  mixer (``ffn="none"``, Mamba's own architecture) and 2 otherwise; biases zeroed. The weights'
  bound is 1/sqrt(fan_in * r * n_layers) and their std 1/sqrt(3 * fan_in * r * n_layers):
  Mamba's out_proj at width 64 (expand 2: fan_in 128) in 2 layers gets std 0.036 without a
  channel mixer and 0.026 with one (depth_scaled: 0.010); at width 256 and 4 layers with one,
  0.0090 (depth_scaled: 0.0071). Every mixer's output projections get it (mamba_ssm's attention
  too); mamba_ssm's MLPs' ``fc2`` as well, but here the channel mixers keep the init above.
- ``zoology``: Zoology's ``_init_weights`` for its Transformer-block models (zoology/model.py):
  every Linear inside the token mixer too (projections, filter MLPs, gates) is drawn from
  N(0, 0.02) with zero biases, and the output projections from N(0, 0.02 / sqrt(2 * n_layers)),
  as ``depth_scaled``. Convolution taps, decays and other raw parameters keep the mixer's init.
- ``own``: the mixer's own init for its output projections too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mixerlab.mixers._contract import count_params
from mixerlab.mixers.hybrid import LayerSpec
from mixerlab.mixers.model.blocks import Block, check_choice, make_ffn, make_norm
from mixerlab.mixers.model.cross_mixers import build_cross_mixer
from mixerlab.mixers.model.generation import generate
from mixerlab.mixers.model.layer_plan import build_layers
from mixerlab.mixers.model.moe import MoEFeedForward
from mixerlab.mixers.model.positions import sinusoidal_table
from mixerlab.mixers.model.readout import LastStateDecoder

__all__ = ["MIXER_INITS", "POS_KINDS", "READOUTS", "SequenceModel"]

POS_KINDS = ("none", "learned", "sinusoidal", "rope")
MIXER_INITS = ("depth_scaled", "mamba", "zoology", "own")
# per_position: each position's logits from its own state; last_state: every position's logits
# from the last position's state through MAD's decoder (mixerlab.mixers.model.readout)
READOUTS = ("per_position", "last_state")


class SequenceModel(nn.Module):
    """A stack of blocks around one registered token mixer (a hybrid spreads its pattern over
    the layers, see :mod:`mixerlab.mixers.model.layer_plan`), for language modelling or
    classification.

    ``forward(tokens, mask)`` returns per-position logits (B, L, vocab_size), or, when
    ``num_classes`` is set, logits (B, num_classes) from the mean of the final states over real
    tokens (``mask`` True), so padding never changes a prediction. ``forward(tokens, mask,
    scored=)`` runs the language-model head only where the bool (B, L) ``scored`` is True and
    returns those positions' logits (N, vocab_size) in row-major order: the same numbers, without
    the head's cost at positions no loss reads (MQAR scores 4 of 64 at vocabulary 8192).
    ``readout="last_state"`` reads every position's logits from the last real position's state
    instead (:class:`~mixerlab.mixers.model.readout.LastStateDecoder`, MAD's compression
    read-out): what the model must reproduce has to survive in that one state.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 256,
        n_layers: int = 4,
        *,
        mixer: str | Sequence[LayerSpec] = "attention",
        mixer_hparams: dict[str, Any] | None = None,
        causal: bool = True,
        max_len: int | None = 256,
        ffn: str = "mlp",
        ffn_mult: float = 4.0,
        ffn_hparams: dict[str, Any] | None = None,
        norm: str = "layernorm",
        pos: str = "learned",
        dropout: float = 0.0,
        tie_embeddings: bool = True,
        num_classes: int | None = None,
        mixer_init: str = "depth_scaled",
        readout: str = "per_position",
        cross_mixer: str | None = None,
        cross_hparams: dict[str, Any] | None = None,
        prefix_lm: bool = False,
    ) -> None:
        super().__init__()
        if vocab_size <= 0 or n_layers <= 0:
            raise ValueError(
                f"vocab_size and n_layers must be positive, got {vocab_size} and {n_layers}"
            )
        check_choice("pos", pos, POS_KINDS)
        check_choice("mixer_init", mixer_init, MIXER_INITS)
        check_choice("readout", readout, READOUTS)
        if readout == "last_state" and (num_classes is not None or max_len is None):
            raise ValueError(
                f"readout='last_state' decodes per-position logits up to max_len, so it needs "
                f"max_len and no num_classes, got max_len={max_len}, num_classes={num_classes}"
            )
        if pos in ("learned", "sinusoidal") and max_len is None:
            raise ValueError(f"pos={pos!r} needs max_len (the longest sequence); pass max_len=")
        if num_classes is not None and num_classes <= 1:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")

        self.vocab_size = vocab_size
        self.d_model = d_model
        self.causal = causal
        self.prefix_lm = prefix_lm
        self.max_len = max_len
        self.pos = pos
        self.num_classes = num_classes

        self.embed = nn.Embedding(vocab_size, d_model)
        if pos == "learned":
            self.pos_embed = nn.Embedding(max_len, d_model)
        elif pos == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(max_len, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)
        mixers = build_layers(
            mixer,
            mixer_hparams,
            n_layers,
            d_model,
            causal=causal,
            max_len=max_len,
            rope=pos == "rope",
        )
        if cross_mixer is None and cross_hparams:
            raise ValueError("cross_hparams configure a cross-mixer: pass cross_mixer= too")
        self.blocks = nn.ModuleList(
            Block(
                layer_mixer,
                make_ffn(ffn, d_model, round(ffn_mult * d_model), dropout, dict(ffn_hparams or {})),
                norm=norm,
                dropout=dropout,
                cross=None
                if cross_mixer is None
                else build_cross_mixer(cross_mixer, d_model, **dict(cross_hparams or {})),
            )
            for layer_mixer in mixers
        )
        if prefix_lm:
            self._check_prefix_lm(num_classes, readout)
        self.last_state_decoder = (
            LastStateDecoder(d_model, max_len, norm) if readout == "last_state" else None
        )
        self.norm = make_norm(norm, d_model)
        if num_classes is None:
            self.head = nn.Linear(d_model, vocab_size, bias=False)
        else:
            self.head = nn.Linear(d_model, num_classes)
        self._init_weights(n_layers, mixer_init)
        if tie_embeddings and num_classes is None:
            self.head.weight = self.embed.weight

    def _check_prefix_lm(self, num_classes: int | None, readout: str) -> None:
        """A prefix LM is a causal language model whose every mixer reads a bidirectional
        prefix (``supports_prefix``)."""
        if not self.causal or num_classes is not None or readout != "per_position":
            raise ValueError(
                "prefix_lm=True reads a bidirectional prefix in a causal language model: it "
                f"needs causal=True, no num_classes and readout='per_position', got "
                f"causal={self.causal}, num_classes={num_classes}, readout={readout!r}"
            )
        causal_only = sorted(
            {type(b.mixer).__name__ for b in self.blocks if not b.mixer.supports_prefix}
        )
        if causal_only:
            raise ValueError(
                f"prefix_lm=True needs mixers that read a bidirectional prefix (supports_prefix: "
                f"attention); {', '.join(causal_only)} read only causally: build it with "
                "prefix_lm=False (the source read as a causal prefix)"
            )

    def _init_weights(self, n_layers: int, mixer_init: str) -> None:
        mixer_params = {id(p) for block in self.blocks for p in block.mixer.parameters()}
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)) and id(module.weight) not in (
                mixer_params
            ):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        # residual branches per layer, as mamba_ssm counts them: the mixer, and the channel mixer
        residuals = 1 if all(block.ffn is None for block in self.blocks) else 2
        for block in self.blocks:
            if block.ffn is not None:
                moe = isinstance(block.ffn, MoEFeedForward)
                out_weight = block.ffn.w_out if moe else block.ffn.down.weight
                out_weight.data.mul_(1 / math.sqrt(2 * n_layers))
            inner = block.mixer.modules() if mixer_init == "zoology" else ()
            for linear in (module for module in inner if isinstance(module, nn.Linear)):
                nn.init.normal_(linear.weight, std=0.02)
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)
            writers = [*block.mixer.output_projections()]
            writers += block.cross.output_projections() if block.cross is not None else []
            for linear in writers if mixer_init != "own" else ():
                if mixer_init == "mamba":  # PyTorch's default Linear init, scaled down by depth
                    nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5))
                    linear.weight.data.div_(math.sqrt(residuals * n_layers))
                else:  # depth_scaled, zoology
                    nn.init.normal_(linear.weight, std=0.02 / math.sqrt(2 * n_layers))
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)

    # -- forward ----------------------------------------------------------------------------
    def _embed(self, tokens: Tensor, start: int) -> Tensor:
        """Token (and absolute position) embeddings of tokens (B, L) at positions start.. on."""
        x = self.embed(tokens)  # (B, L, d)
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        if self.pos == "learned":
            return x + self.pos_embed(positions)
        if self.pos == "sinusoidal":
            return x + self.pos_table[positions]
        return x

    def _check_tokens(self, tokens: Tensor, mask: Tensor | None) -> None:
        if tokens.dim() != 2 or tokens.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"tokens must be an integer tensor of shape (batch, length), got "
                f"{tokens.dtype} {tuple(tokens.shape)}"
            )
        if self.max_len is not None and tokens.shape[1] > self.max_len:
            raise ValueError(
                f"sequence length {tokens.shape[1]} is longer than the model's max_len "
                f"{self.max_len}; build the model with max_len >= {tokens.shape[1]}"
            )
        if mask is not None and mask.shape != tokens.shape:
            raise ValueError(
                f"mask shape {tuple(mask.shape)} differs from tokens shape {tuple(tokens.shape)}"
            )

    @property
    def reads_encoder(self) -> bool:
        """Whether the blocks read an encoder (they were built with a cross-mixer)."""
        return any(block.cross is not None for block in self.blocks)

    def _layer_memories(self, memories: Sequence[Any] | None) -> Sequence[Any]:
        """One memory per block: the encoder's, made by :meth:`memories`, in a model that reads
        one; nothing otherwise."""
        if memories is None:
            if self.reads_encoder:
                raise ValueError(
                    "this model's blocks read an encoder: pass memories=model.memories(encoder "
                    "output, source mask)"
                )
            return [None] * len(self.blocks)
        if not self.reads_encoder or len(memories) != len(self.blocks):
            raise ValueError(
                f"memories: one per block of a model that reads an encoder ({len(self.blocks)} "
                f"blocks, cross_mixer {'set' if self.reads_encoder else 'None'}), got "
                f"{len(memories)}"
            )
        return memories

    def memories(self, context: Tensor, context_mask: Tensor | None = None) -> list[Any]:
        """What each block's cross-mixer keeps of an encoder's output (B, S, d_model), made once
        per source for ``forward``, ``prefill``, ``step`` and ``generate``."""
        if not self.reads_encoder:
            raise ValueError("memories need a model built with a cross_mixer")
        return [block.cross.memory(context, context_mask) for block in self.blocks]

    def _check_prefix(self, tokens: Tensor, prefix: Tensor | None) -> None:
        """A prefix LM needs ``prefix``, one length in [0, L] per row; another model none."""
        if not self.prefix_lm:
            if prefix is not None:
                raise ValueError(
                    "prefix is given but this model reads causally (prefix_lm=False); pass "
                    "prefix=None, or build the model with prefix_lm=True"
                )
            return
        length = tokens.shape[1]
        if prefix is None or prefix.shape != tokens.shape[:1]:
            got = "None" if prefix is None else f"shape {tuple(prefix.shape)}"
            raise ValueError(
                f"a prefix LM reads the first prefix[b] tokens of row b bidirectionally: pass "
                f"prefix, a ({tokens.shape[0]},) integer tensor (0 for none), got {got}"
            )
        if bool(((prefix < 0) | (prefix > length)).any()):
            raise ValueError(
                f"prefix lengths must lie in [0, {length}] (the sequence's length), got "
                f"{prefix.tolist()}"
            )

    def _hidden(
        self,
        tokens: Tensor,
        mask: Tensor | None,
        memories: Sequence[Any] | None,
        prefix: Tensor | None = None,
    ) -> Tensor:
        """The blocks' output (B, L, d_model), before the final norm."""
        x = self.dropout(self._embed(tokens, 0))
        for block, memory in zip(self.blocks, self._layer_memories(memories), strict=True):
            x = block(x, mask, memory, prefix)
        return x

    def encode(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """Each position's final state (B, L, d_model), normed, as a head would read it: what an
        encoder hands its decoder."""
        self._check_tokens(tokens, mask)
        return self.norm(self._hidden(tokens, mask, None))

    def forward(
        self,
        tokens: Tensor,
        mask: Tensor | None = None,
        scored: Tensor | None = None,
        memories: Sequence[Any] | None = None,
        prefix: Tensor | None = None,
    ) -> Tensor:
        self._check_tokens(tokens, mask)
        self._check_prefix(tokens, prefix)
        if scored is not None and (self.num_classes is not None or scored.shape != tokens.shape):
            raise ValueError(
                f"scored selects language-model positions: a bool mask shaped like tokens "
                f"{tuple(tokens.shape)}, got {tuple(scored.shape)} on a model with "
                f"num_classes={self.num_classes}; pass scored=None"
            )
        x = self._hidden(tokens, mask, memories, prefix)
        if self.last_state_decoder is not None:
            return self.head(self.norm(self.last_state_decoder(x, mask, scored)))
        x = self.norm(x)
        if self.num_classes is None:
            return self.head(x if scored is None else x[scored])
        if mask is None:
            pooled = x.mean(dim=1)
        else:
            weights = mask.to(x.dtype).unsqueeze(-1)
            pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
        return self.head(pooled)

    @property
    def aux_loss(self) -> Tensor:
        """Sum of the auxiliary losses (e.g. MoE balancing) set during the last forward."""
        losses = [
            module.aux_loss
            for module in self.modules()
            if module is not self and getattr(module, "aux_loss", None) is not None
        ]
        if not losses:
            return self.embed.weight.new_zeros(())
        return torch.stack(losses).sum()

    # -- accounting ---------------------------------------------------------------------------
    def num_params(self) -> int:
        """Parameters, counting tied embeddings once."""
        return count_params(self)

    def _source_len(self, source_len: int | None) -> int:
        if self.reads_encoder and source_len is None:
            raise ValueError("this model reads an encoder: pass source_len, the source's length")
        return source_len or 0

    def flops_per_token(self, seq_len: int, source_len: int | None = None) -> float:
        """Analytic forward FLOPs per token: mixers, cross-mixers reading a source of
        ``source_len`` tokens (their memories' own cost is per source token, counted by
        :meth:`memory_flops_per_source_token`), channel mixers and the output head."""
        total = 2.0 * self.d_model * self.head.out_features
        if self.last_state_decoder is not None:
            total += self.last_state_decoder.flops_per_token()
        return total + self.blocks_flops_per_token(seq_len, source_len)

    def blocks_flops_per_token(self, seq_len: int, source_len: int | None = None) -> float:
        """The blocks' share of :meth:`flops_per_token`: what an encoder, whose head never runs,
        spends per token."""
        source_len = self._source_len(source_len)
        total = 0.0
        for block in self.blocks:
            total += block.mixer.flops_per_token(seq_len)
            if block.cross is not None:
                total += block.cross.flops_per_token(source_len)
            if block.ffn is not None:
                total += block.ffn.flops_per_token()
        return total

    def memory_flops_per_source_token(self) -> float:
        """FLOPs per source token of making the cross-mixers' memories (0 without them)."""
        return sum(
            block.cross.memory_flops_per_token() for block in self.blocks if block.cross is not None
        )

    def state_size(self, seq_len: int, source_len: int | None = None) -> int | None:
        """Floats of decoding state per sequence after ``seq_len`` tokens, summed over the
        layers' mixers (Zoology's state-size axis) and, reading an encoder, the cross-mixers'
        memories of a ``source_len`` source; None for a model that cannot decode step by step
        (an encoder, a mixer without ``step``) or a mixer that does not report its own."""
        source_len = self._source_len(source_len)
        if not self.supports_step:
            return None
        sizes = [block.mixer.state_size(seq_len) for block in self.blocks]
        sizes += [block.cross.memory_size(source_len) for block in self.blocks if block.cross]
        return None if None in sizes else sum(sizes)

    # -- incremental decoding -----------------------------------------------------------------
    @property
    def supports_step(self) -> bool:
        return (
            self.causal
            and self.num_classes is None
            and self.last_state_decoder is None
            and all(block.mixer.supports_step for block in self.blocks)
        )

    def init_state(self, batch_size: int, memories: Sequence[Any] | None = None) -> dict[str, Any]:
        """The state before the first token; a model that reads an encoder keeps its
        ``memories`` in it, made once."""
        return {
            "position": 0,
            "blocks": [block.mixer.init_state(batch_size) for block in self.blocks],
            "memories": list(self._layer_memories(memories)),
        }

    def step(self, token_t: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """Logits (B, vocab) for the next token after ``token_t`` (B,); equals ``forward``."""
        position = state["position"]
        if self.max_len is not None and position >= self.max_len:
            raise ValueError(
                f"decoding position {position + 1} exceeds the model's max_len {self.max_len}"
            )
        x = self._embed(token_t[:, None], position)[:, 0]
        new_states = []
        layers = zip(self.blocks, state["blocks"], state["memories"], strict=True)
        for block, block_state, memory in layers:
            x, block_state = block.step(x, block_state, memory)
            new_states.append(block_state)
        return self.head(self.norm(x)), {**state, "position": position + 1, "blocks": new_states}

    def prefill(
        self, tokens: Tensor, memories: Sequence[Any] | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        """Logits (B, T, vocab) of a prompt (B, T) and the decoding state after it, from one
        parallel pass per layer (each mixer's ``prefill``); equals ``init_state`` and T steps,
        except in a prefix LM, which reads the whole prompt as its bidirectional prefix."""
        self._check_tokens(tokens, None)
        if not self.supports_step:
            raise ValueError("prefill needs a causal language model whose mixers all step")
        memories = list(self._layer_memories(memories))
        x = self._embed(tokens, 0)
        prefix = self.prompt_prefix(tokens)
        states = []
        for block, memory in zip(self.blocks, memories, strict=True):
            x, block_state = block.prefill(x, memory, prefix)
            states.append(block_state)
        state = {"position": tokens.shape[1], "blocks": states, "memories": memories}
        return self.head(self.norm(x)), state

    def prompt_prefix(self, prompt: Tensor) -> Tensor | None:
        """A prefix LM's prefix when it reads ``prompt`` (B, T): all of it; None otherwise."""
        if not self.prefix_lm:
            return None
        return torch.full(prompt.shape[:1], prompt.shape[1], device=prompt.device)

    generate = generate  # sampling, prefill then steps: mixerlab.mixers.model.generation
