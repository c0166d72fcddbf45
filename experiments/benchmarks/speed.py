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


def interleaved(timers: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Each timer's seconds in every repeat, run in turn (A, B, A, B, ...), so a slow spell of a
    shared machine hits every side alike."""
    seconds: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(repeats):
        for name, timer in timers.items():
            seconds[name].append(timer())
    return seconds


def measure_interleaved(
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
    timers = {name: functools.partial(t.time, steps, warmup) for name, t in trainers.items()}
    seconds = interleaved(timers, repeats)
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


def ours_builder(shape: Shape, mixer: str, **kwargs) -> Callable[[], nn.Module]:
    return lambda: SequenceModel(
        VOCAB, shape.d_model, shape.n_layers, mixer=mixer, max_len=shape.seq_len, **kwargs
    )


def timing_of(args: argparse.Namespace) -> dict[str, int]:
    return {"steps": args.steps, "warmup": args.warmup, "repeats": args.repeats}


def bench_mixers(shape: Shape, args: argparse.Namespace) -> dict:
    builders = {name: ours_builder(shape, name) for name in available_mixers()}
    measured = measure_interleaved(builders, shape, **timing_of(args))
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
    build = ours_builder(shape, "attention")
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
    (model,) = measure_interleaved(
        {"attention": ours_builder(shape, "attention")}, shape, **timing_of(args)
    )
    return {
        "loader_tokens_per_s": loader_tps,
        "model_tokens_per_s": model.tokens_per_s,
        "headroom": loader_tps / model.tokens_per_s,
    }
