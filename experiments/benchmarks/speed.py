"""Training speed at one shape (:class:`Shape`, a small byte-level decoder): ``mixerlab bench
reference``, ``mixers``, ``overhead`` and ``loader``.

Every number is the bare training step (:func:`.training_step.training_step`: forward, loss,
backward, AdamW step) in fp32. Competing implementations are measured interleaved (A, B, A, B,
...) and the median of the repeats is reported, so a slow spell of a shared machine hits both
sides alike.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from mixerlab.experiments.benchmarks.training_step import training_step
from mixerlab.mixers import SequenceModel, available_mixers, count_params

VOCAB = 256  # byte-level


class BenchError(Exception):
    """A benchmark that cannot run here; the message says why and what to do."""


@dataclass
class Shape:
    """The benchmark shape: a small byte-level decoder."""

    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    seq_len: int = 256
    batch_size: int = 16


@dataclass
class Measurement:
    name: str
    params: int
    tokens_per_s: float
    step_ms: float
    repeats: list[float]


def random_batch(shape: Shape, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (shape.batch_size, shape.seq_len + 1), generator=gen)


class BareTrainer:
    """The bare training step on one model and batch, timed over ``steps`` after ``warmup``."""

    def __init__(self, model: nn.Module, batch: torch.Tensor, lr: float = 1e-3) -> None:
        self.model = model.train()
        self.batch = batch
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr)

    def step(self) -> None:
        training_step(self.model, self.optimizer, self.batch)

    def time(self, steps: int, warmup: int) -> float:
        """Seconds per step."""
        for _ in range(warmup):
            self.step()
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        return (time.perf_counter() - start) / steps


def _measure_interleaved(
    builders: dict[str, Callable[[], nn.Module]],
    shape: Shape,
    *,
    steps: int,
    warmup: int,
    repeats: int,
) -> list[Measurement]:
    batch = random_batch(shape)
    tokens = shape.batch_size * shape.seq_len
    trainers = {}
    for name, build in builders.items():
        torch.manual_seed(0)
        trainers[name] = BareTrainer(build(), batch)
    seconds: dict[str, list[float]] = {name: [] for name in builders}
    for _ in range(repeats):
        for name, trainer in trainers.items():
            seconds[name].append(trainer.time(steps, warmup))
    results = []
    for name, trainer in trainers.items():
        median = statistics.median(seconds[name])
        results.append(
            Measurement(
                name=name,
                params=count_params(trainer.model),
                tokens_per_s=tokens / median,
                step_ms=1000 * median,
                repeats=[round(tokens / s, 1) for s in seconds[name]],
            )
        )
    return results


def _ours(shape: Shape, mixer: str, **kwargs) -> Callable[[], nn.Module]:
    return lambda: SequenceModel(
        VOCAB, shape.d_model, shape.n_layers, mixer=mixer, max_len=shape.seq_len, **kwargs
    )


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
            "mixerlab attention": _ours(
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
            "mixerlab gmlp": _ours(
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
            "mixerlab sliding_window": _ours(
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
            "mixerlab ssm (mamba)": _ours(
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
            "mixerlab linear_attention": _ours(
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


def _timing(args: argparse.Namespace) -> dict[str, int]:
    return {"steps": args.steps, "warmup": args.warmup, "repeats": args.repeats}


def bench_reference(shape: Shape, args: argparse.Namespace) -> dict:
    report = {}
    for pair, builders in reference_builders(shape).items():
        ours, theirs = _measure_interleaved(builders, shape, **_timing(args))
        report[pair] = {
            "ours": asdict(ours),
            "reference": asdict(theirs),
            "ratio": ours.tokens_per_s / theirs.tokens_per_s,
        }
    return report


def bench_mixers(shape: Shape, args: argparse.Namespace) -> dict:
    builders = {name: _ours(shape, name) for name in available_mixers()}
    measured = _measure_interleaved(builders, shape, **_timing(args))
    report = {}
    for m in measured:
        model = builders[m.name]()
        report[m.name] = {**asdict(m), "flops_per_token": model.flops_per_token(shape.seq_len)}
    return report


def _fixed_batches(batch: torch.Tensor) -> Iterator[dict[str, torch.Tensor]]:
    inputs, targets = batch[:, :-1], batch[:, 1:]
    mask = torch.ones_like(inputs, dtype=torch.bool)
    while True:
        yield {"input": inputs, "target": targets, "mask": mask}


def bench_overhead(shape: Shape, args: argparse.Namespace) -> dict:
    """Tokens/s of Lightning's fit loop vs the bare loop above, same model, batch and optimiser."""
    steps, warmup, repeats = args.steps, args.warmup, args.repeats
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, IterableDataset

    from mixerlab.lightning_modules.modules import LanguageModelModule

    class _Repeat(IterableDataset):
        def __init__(self, batch: torch.Tensor) -> None:
            self.batch = batch

        def __iter__(self):
            return _fixed_batches(self.batch)

    class _StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.start = 0.0
            self.end = 0.0

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if batch_idx == warmup:
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self.end = time.perf_counter()

    batch = random_batch(shape)
    tokens = shape.batch_size * shape.seq_len
    build = _ours(shape, "attention")
    bare, lightning = [], []
    for _ in range(repeats):
        torch.manual_seed(0)
        bare.append(BareTrainer(build(), batch).time(steps, warmup))
        torch.manual_seed(0)
        optimizer = functools.partial(torch.optim.AdamW, lr=1e-3)  # no schedule, as bare
        module = LanguageModelModule(build(), optimizer=optimizer, bytes_per_token=1.0)
        timer = _StepTimer()
        trainer = pl.Trainer(
            max_steps=warmup + steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            accelerator="cpu",
            callbacks=[timer],
        )
        loader = DataLoader(_Repeat(batch), batch_size=None)
        trainer.fit(module, train_dataloaders=loader)
        lightning.append((timer.end - timer.start) / steps)
    bare_tps = tokens / statistics.median(bare)
    lightning_tps = tokens / statistics.median(lightning)
    return {
        "bare_tokens_per_s": bare_tps,
        "lightning_tokens_per_s": lightning_tps,
        "ratio": lightning_tps / bare_tps,
    }


def bench_loader(shape: Shape, args: argparse.Namespace) -> dict:
    """The default task's loader throughput next to the model's training throughput."""
    steps, repeats = args.steps, args.repeats
    from mixerlab.lightning_modules.tasks._loading import measure_loader_throughput
    from mixerlab.lightning_modules.tasks.text import TextLMDataModule

    dm = TextLMDataModule(seq_len=shape.seq_len, batch_size=shape.batch_size)
    dm.prepare_data()
    dm.setup("fit")
    loader_tps = statistics.median(
        measure_loader_throughput(dm, n_batches=max(steps, 50)) for _ in range(repeats)
    )
    (model,) = _measure_interleaved(
        {"attention": _ours(shape, "attention")}, shape, **_timing(args)
    )
    return {
        "loader_tokens_per_s": loader_tps,
        "model_tokens_per_s": model.tokens_per_s,
        "headroom": loader_tps / model.tokens_per_s,
    }
