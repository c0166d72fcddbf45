"""``mixerlab bench compile``: what ``compile=true`` (``torch.compile`` of the whole model, as a
run does it) costs and gains for every shipped mixer preset on this machine.

Per preset, at the bench shape: the start-up (the first compiled training step, compilation
included, less an eager step), the training tokens/s of the eager and the compiled model measured
interleaved (median of the repeats, after the warm-up), their ratio, and how far the compiled
forward and backward are from eager on a padded batch (:func:`compiled_gap`): compilation
reorders and fuses floating-point work, so it changes numerics, which is why presets and stored
baselines keep ``compile`` off.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mixerlab.experiments.benchmarks.gpu_check import relative_gaps
from mixerlab.experiments.benchmarks.presets import mixer_presets, preset_model
from mixerlab.experiments.benchmarks.speed import (
    VOCAB,
    BareTrainer,
    Shape,
    interleaved,
    random_batch,
)


@dataclass
class CompiledGap:
    """How far a compiled model is from eager: the largest logit difference at real positions,
    and the largest gradient difference of a parameter relative to that gradient's largest
    magnitude."""

    logits: float
    gradients: float


def compiled_gap(model: nn.Module, length: int = 64, batch_size: int = 4) -> CompiledGap:
    """Forward and backward of ``model`` and of a compiled copy with the same weights on one
    padded batch (one row ends 3/4 of the way)."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, VOCAB, (batch_size, length), generator=generator)
    mask = torch.ones(batch_size, length, dtype=torch.bool)
    mask[1, 3 * length // 4 :] = False
    compiled = copy.deepcopy(model)
    compiled.compile()
    outputs, gradients = [], []
    for version in (model, compiled):
        logits = version(tokens, mask)
        logits.logsumexp(-1)[mask].mean().backward()
        outputs.append(logits.detach())
        gradients.append({n: p.grad for n, p in version.named_parameters() if p.grad is not None})
    gaps = relative_gaps(gradients[1], gradients[0]).values()
    return CompiledGap(float((outputs[1] - outputs[0])[mask].abs().max()), max(gaps, default=0.0))


def bench_compile(shape: Shape, args: argparse.Namespace) -> dict[str, Any]:
    """Start-up, tokens/s eager and compiled, and the numerical gap, per shipped preset."""
    batch = random_batch(shape)
    tokens = shape.batch_size * shape.seq_len
    report: dict[str, Any] = {}
    for preset, (name, hparams) in mixer_presets().items():
        torch._dynamo.reset()  # each preset compiles from scratch: its own start-up
        torch.manual_seed(0)
        model = preset_model(
            name, hparams, vocab=VOCAB, d_model=shape.d_model, max_len=shape.seq_len
        )
        gap = compiled_gap(copy.deepcopy(model), length=shape.seq_len)
        eager = BareTrainer(model, batch)
        compiled_model = copy.deepcopy(model)
        compiled_model.compile()
        compiled = BareTrainer(compiled_model, batch)
        eager_step = eager.time(1, 0)
        start = time.perf_counter()
        compiled.step()
        startup = time.perf_counter() - start - eager_step
        timers = {
            side: functools.partial(trainer.time, args.steps, args.warmup)
            for side, trainer in (("eager", eager), ("compiled", compiled))
        }
        eager_s, compiled_s = map(statistics.median, interleaved(timers, args.repeats).values())
        report[preset] = {
            "startup_s": round(startup, 1),
            "eager_tokens_per_s": round(tokens / eager_s, 1),
            "compiled_tokens_per_s": round(tokens / compiled_s, 1),
            "speedup": round(eager_s / compiled_s, 3),
            "logits_gap": gap.logits,
            "gradient_gap": gap.gradients,
        }
        print(f"{preset:<16} {report[preset]}", flush=True)
    return report
