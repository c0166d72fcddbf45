"""``mixerlab bench reference``: each family's model against a pure-PyTorch peer from PyPI at
the same shape, each at its fastest settings: the training step, and the decoding step where the
peer has an incremental path (what differs per pair is in ``docs/benchmarks.md``)."""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from mixerlab.experiments.benchmarks.speed import (
    VOCAB,
    BenchError,
    Shape,
    interleaved,
    measure_interleaved,
    ours_builder,
    timing_of,
)
from mixerlab.mixers import SequenceModel

# The families without a peer in ``bench reference``, and why.
NO_PEER = {
    "hyena": "no maintained pure-PyTorch Hyena on PyPI (safari's is a repository, not a package)",
    "rnn": "mixerlab's LSTM is torch.nn.LSTM itself: PyTorch's fused kernel is the peer",
    "conv": "a gated depthwise Conv1d: no package wraps it as a model",
    "smlp": "no pure-PyTorch sparse all-MLP (sMLP) model on PyPI",
    "base_conv": "Zoology's BaseConv is a repository, not a package",
    "retnet": "torchscale's pins pull torchvision and timm: not installed by the bench extra yet",
    "s4d": "state-spaces/s4 is a repository, not a package",
    "hybrid": "a stack of the other families, each raced alone",
}
# The registered mixer each raced family builds (the others race under their own name).
RACED_MIXER = {"mamba": "ssm"}


def _peer_imports() -> SimpleNamespace:
    """The peer packages of the ``bench`` extra, imported here so that a missing one is named."""
    try:
        from g_mlp_pytorch import gMLP
        from local_attention import LocalTransformer
        from mambapy.mamba import Mamba, MambaConfig, RMSNorm
        from performer_pytorch import PerformerLM
        from x_transformers import Decoder, TransformerWrapper
    except ImportError as err:
        raise BenchError(
            f"bench reference needs the reference implementations ({err}); install them with "
            "pip install 'mixerlab[bench]', or run the other benchmarks: mixerlab bench mixers"
        ) from None
    return SimpleNamespace(
        gMLP=gMLP,
        LocalTransformer=LocalTransformer,
        Mamba=Mamba,
        MambaConfig=MambaConfig,
        RMSNorm=RMSNorm,
        PerformerLM=PerformerLM,
        Decoder=Decoder,
        TransformerWrapper=TransformerWrapper,
    )


class _MambapyLM(nn.Module):
    """mambapy's Mamba stack as a language model: embedding, the stack, RMSNorm, an untied head
    (mambapy's own ``lm.LM`` imports mamba_ssm's CUDA kernels for its Mamba-2 path)."""

    def __init__(self, peer: SimpleNamespace, config: Any) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, config.d_model)
        self.mamba = peer.Mamba(config)
        self.norm = peer.RMSNorm(config.d_model)
        self.head = nn.Linear(config.d_model, VOCAB, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.mamba(self.embedding(tokens))))


def reference_builders(shape: Shape) -> dict[str, dict[str, Callable[[], nn.Module]]]:
    """Pairs (ours, theirs) of the same shape, each peer at its fastest pure-PyTorch settings;
    imports the reference packages lazily."""
    peer = _peer_imports()
    d, depth, heads, length = shape.d_model, shape.n_layers, shape.n_heads, shape.seq_len
    transformer = {"ffn": "mlp", "ffn_mult": 4.0, "pos": "learned", "tie_embeddings": False}
    window = 64
    # the keywords local-attention's and performer-pytorch's models share (one author's)
    lucidrains = {
        "num_tokens": VOCAB,
        "max_seq_len": length,
        "dim": d,
        "depth": depth,
        "heads": heads,
        "dim_head": d // heads,
        "causal": True,
        "ff_mult": 4,
    }
    return {
        "attention": {
            "mixerlab attention": ours_builder(
                shape, "attention", mixer_hparams={"n_heads": heads}, **transformer
            ),
            # attn_flash: its path to F.scaled_dot_product_attention (the default is unfused)
            "x-transformers Decoder": lambda: peer.TransformerWrapper(
                num_tokens=VOCAB,
                max_seq_len=length,
                attn_layers=peer.Decoder(
                    dim=d, depth=depth, heads=heads, attn_dim_head=d // heads, attn_flash=True
                ),
            ),
        },
        "gmlp": {
            # g-mlp-pytorch's block is the gMLP unit alone (no separate FFN), width ff_mult * dim.
            "mixerlab gmlp": ours_builder(
                shape,
                "gmlp",
                mixer_hparams={"d_ffn": 4 * d},
                ffn="none",
                pos="none",
                tie_embeddings=False,
            ),
            "g-mlp-pytorch gMLP": lambda: peer.gMLP(
                num_tokens=VOCAB, dim=d, depth=depth, seq_len=length, causal=True, ff_mult=4
            ),
        },
        "sliding_window": {
            # Both reach 64 positions back at most: local-attention's query reads its own window
            # and the one before (between w + 1 and 2w keys), so w = 32; rotary positions in both.
            "mixerlab sliding_window": ours_builder(
                shape,
                "sliding_window",
                mixer_hparams={"n_heads": heads, "window": window, "rope": True},
                **transformer,
            ),
            "local-attention LocalTransformer": lambda: peer.LocalTransformer(
                **lucidrains,
                local_attn_window_size=window // 2,
                num_residual_streams=1,  # plain residuals (its default adds hyper-connections)
            ),
        },
        "mamba": {
            # Mamba's own block (no MLP, RMSNorm), mamba_ssm's defaults in both
            "mixerlab ssm (mamba)": ours_builder(
                shape,
                "ssm",
                mixer_hparams={"selective": True, "d_state": 16, "expand": 2, "init": "real"},
                ffn="none",
                norm="rmsnorm",
                pos="none",
                tie_embeddings=False,
            ),
            # pscan: its parallel scan, the fast training path without CUDA
            "mambapy Mamba": lambda: _MambapyLM(
                peer, peer.MambaConfig(d_model=d, n_layers=depth, expand_factor=2, pscan=True)
            ),
        },
        "linear_attention": {
            # ReLU features of width 16 per head in both (performer's generalized attention;
            # without it, FAVOR+'s random softmax features), values of d / heads; its causal
            # path is its exact prefix sum (the fast one needs CUDA)
            "mixerlab linear_attention": ours_builder(
                shape,
                "linear_attention",
                mixer_hparams={"n_heads": heads, "feature_map": "relu", "feature_dim": 16},
                **transformer,
            ),
            "performer-pytorch PerformerLM": lambda: peer.PerformerLM(
                **lucidrains,
                nb_features=16,
                generalized_attention=True,
                feature_redraw_interval=None,
                rotary_position_emb=False,
            ),
        },
    }


class Decoder:
    """A model's incremental decoding, one batch at a time: ``start`` reads a prompt (B, T) and
    returns the logits after it (B, vocab); each ``next`` feeds one token (B,) and returns the
    logits after it. This one is mixerlab's: ``prefill``, then ``step``."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()

    def start(self, prompt: Tensor) -> Tensor:
        logits, self.state = self.model.prefill(prompt)
        return logits[:, -1]

    def next(self, token: Tensor) -> Tensor:
        logits, self.state = self.model.step(token, self.state)
        return logits


class XTransformersDecoder(Decoder):
    """x-transformers' path: the whole sequence so far and the cache on every call (it reads
    only the newest token past the cache)."""

    def _call(self, cache: Any) -> Tensor:
        logits, self.cache = self.model(self.tokens, cache=cache, return_intermediates=True)
        return logits[:, -1]

    def start(self, prompt: Tensor) -> Tensor:
        self.tokens = prompt
        return self._call(None)

    def next(self, token: Tensor) -> Tensor:
        self.tokens = torch.cat((self.tokens, token[:, None]), dim=1)
        return self._call(self.cache)


class MambapyDecoder(Decoder):
    """mambapy's ``step``, one token at a time from zero caches: it has no parallel prefill."""

    def start(self, prompt: Tensor) -> Tensor:
        config, batch = self.model.mamba.config, prompt.shape[0]
        inner = config.d_inner
        self.caches = [
            (prompt.new_zeros(batch, inner, config.d_state, dtype=torch.float),
             prompt.new_zeros(batch, inner, config.d_conv - 1, dtype=torch.float))
            for _ in range(config.n_layers)
        ]  # fmt: skip
        for position in range(prompt.shape[1]):
            logits = self.next(prompt[:, position])
        return logits

    def next(self, token: Tensor) -> Tensor:
        x, self.caches = self.model.mamba.step(self.model.embedding(token), self.caches)
        return self.model.head(self.model.norm(x))


# How each peer decodes incrementally. Not here: g-mlp-pytorch's gMLP and performer-pytorch's
# PerformerLM have no incremental path; local-attention 1.11.2's cached path
# (``return_cache=True``) departs from its own forward from the third cached token on (logits off
# by 0.04-0.07 at width 64, tested the way the others are), so its decoding is not raced.
PEER_DECODERS: dict[str, Callable[[nn.Module], Decoder]] = {
    "x-transformers Decoder": XTransformersDecoder,
    "mambapy Mamba": MambapyDecoder,
}


def decoder_of(name: str, model: nn.Module) -> Decoder | None:
    """The incremental decoder of one side of a pair, or None where it has none."""
    if isinstance(model, SequenceModel):
        return Decoder(model)
    build = PEER_DECODERS.get(name)
    return build(model) if build else None


@torch.no_grad()
def decoding_seconds(decoder: Decoder, prompt: Tensor, tokens: int) -> float:
    """Seconds per decoded token: ``tokens`` greedy steps after the prompt (its prefill is not
    timed)."""
    token = decoder.start(prompt).argmax(-1)
    start = time.perf_counter()
    for _ in range(tokens):
        token = decoder.next(token).argmax(-1)
    return (time.perf_counter() - start) / tokens


def race_decoding(
    builders: dict[str, Callable[[], nn.Module]], shape: Shape, repeats: int, tokens: int = 32
) -> dict[str, Any] | None:
    """Decoded tokens/s of both sides of a pair, batch 1, after a prompt that leaves ``tokens``
    positions to ``seq_len``; interleaved, median of ``repeats``. None when a side cannot
    decode incrementally."""
    decoders = {}
    for name, build in builders.items():
        torch.manual_seed(0)
        decoder = decoder_of(name, build())
        if decoder is None:
            return None
        decoders[name] = decoder
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, VOCAB, (1, shape.seq_len - tokens), generator=generator)
    timers = {
        name: functools.partial(decoding_seconds, decoder, prompt, tokens)
        for name, decoder in decoders.items()
    }
    seconds = interleaved(timers, repeats)
    rates = {name: 1 / statistics.median(times) for name, times in seconds.items()}
    ours, theirs = rates.values()
    return {"tokens_per_s": rates, "ratio": ours / theirs, "prompt": prompt.shape[1]}


def bench_reference(shape: Shape, args: argparse.Namespace) -> dict:
    """Each pair's training step, and its decoding step where both sides have one."""
    report = {}
    for pair, builders in reference_builders(shape).items():
        ours, theirs = measure_interleaved(builders, shape, **timing_of(args))
        report[pair] = {
            "ours": asdict(ours),
            "reference": asdict(theirs),
            "ratio": ours.tokens_per_s / theirs.tokens_per_s,
            "decoding": race_decoding(builders, shape, args.repeats)
            or "no incremental decoding in the peer",
        }
    return report
