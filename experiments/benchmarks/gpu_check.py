"""The GPU path in one go:
``python -m mixerlab.experiments.benchmarks.gpu_check [--out DIR]``.

On a CUDA machine it runs each of these and prints one report of what passed and what failed:

1. ``bf16 train``: every shipped mixer preset's training step (forward, loss, backward, AdamW)
   under bf16 autocast on a small model: the loss and every gradient must be finite.
2. ``contract``: the whole mixer contract (``mixerlab.mixers.testing.check_mixer``) for every
   preset on the GPU (``with torch.device("cuda")``): in fp32 with TF32 off, so that fp32 means
   fp32, at atol 1e-4 (GPU kernels sum in other orders than the CPU's); and under bf16 autocast at
   ``BF16_TOLERANCE``, the tolerance every preset passes on the CPU.
3. ``sdpa``: which kernel ``F.scaled_dot_product_attention`` runs for attention's calls: training
   without padding (``is_causal``), a padded batch (a boolean mask), one decoding step over the
   KV cache, in fp32 and bf16. Found by profiling which ``aten::_scaled_dot_product_*`` operator
   runs: flash, efficient (memory-efficient), cudnn or math (the unfused fallback).
4. ``compile``: ``mixerlab train experiment=smoke trainer=gpu compile=true`` for a few steps.
5. ``ddp``: two processes step like one on their batches together: a run of batch 8 on each of
   two processes ends with the weights of one process at batch 16 (the CPU suite's equivalence,
   ``tests/end_to_end/test_ddp_cpu.py``, on ``DDP_TASK``). On two GPUs over NCCL, in fp32 (TF32
   as a run sets it), within ``GPU_DDP_TOLERANCE``; where there is one GPU (NCCL takes one GPU
   per process), on two CPU processes over gloo within ``CPU_DDP_TOLERANCE``, which still checks
   the wiring (samplers, the loss normalised over both ranks' tokens, rank-0 writes).

Exit status 0 when everything passed, 1 when something failed. Without a CUDA device it prints
"no CUDA device" and exits 0, so it can sit in any script. The SDPA probe runs on the CPU too
(``sdpa_backends("cpu", ...)``), and the DDP item on two CPU processes, which is how their tests
run here.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from mixerlab.experiments.benchmarks.presets import mixer_presets, preset_model
from mixerlab.experiments.benchmarks.training_step import training_step
from mixerlab.lightning_modules.record import CHECKPOINT_DIR, LAST_CHECKPOINT, read_results
from mixerlab.mixers import build_mixer
from mixerlab.mixers.testing import BF16_TOLERANCE, check_mixer

SDPA_KERNELS = ("flash", "efficient", "cudnn", "math")  # as the aten operators name them
SMOKE = ["experiment=smoke", "logger=csv", "trainer.max_steps=10", "trainer.val_check_interval=5"]
# Reversal read as one causal sequence: lengths vary, so batches are padded and each process
# scores a different number of tokens in a step. SGD: its step is proportional to the gradient,
# where Adam's first steps blow float noise (the key bias's gradient is exactly 0 in theory) up
# to a step of the learning rate.
DDP_TASK = (
    "task=reversal", "design=decoder_only", "model.d_model=32", "model.n_layers=1",
    "task.datamodule.num_train=256", "task.datamodule.num_val=32", "optim.warmup_steps=0",
    "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.limit_val_batches=2",
    "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=1", "logger=csv",
    "callbacks.progress_bar=false", "optim.optimizer._target_=torch.optim.SGD",
    "~optim.optimizer.betas", "optim.lr=0.3",
)  # fmt: skip
# Largest weight gap after DDP_TASK's 6 steps, relative to the weight's largest magnitude: on the
# CPU the two sum in other orders only; on GPUs TF32 matmuls of other shapes round differently.
CPU_DDP_TOLERANCE, GPU_DDP_TOLERANCE = 1e-5, 1e-3


@dataclass
class Outcome:
    check: str
    passed: bool
    detail: str


def sdpa_kernel_used(fn: Callable[[], object]) -> str:
    """Which SDPA kernel ``fn`` runs: the name in the ``aten::_scaled_dot_product_*`` operator
    the dispatcher picked, or "none" when it calls no SDPA."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:  # operators are recorded on the host
        fn()
    names = [event.name for event in prof.events() if "scaled_dot_product" in event.name]
    for kernel in SDPA_KERNELS:
        if any(kernel in name for name in names):
            return kernel
    return "none"


def sdpa_backends(device: str, dtype: torch.dtype) -> dict[str, str]:
    """The kernel of attention's three kinds of SDPA call at a training-like shape."""
    torch.manual_seed(0)
    attention = build_mixer("attention", 256, causal=True, max_len=512).to(device).eval()
    x = torch.randn(4, 512, 256, device=device)
    mask = torch.arange(512, device=device) < torch.tensor(
        [[512], [300], [512], [17]], device=device
    )
    autocast = torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32)
    with torch.no_grad(), autocast:
        _, state = attention.prefill(x[:, :-1])  # the cache a step at position 511 reads
        calls = {
            "causal, no padding": lambda: attention(x),
            "padded batch": lambda: attention(x, mask),
            "decoding step": lambda: attention.step(x[:, 0], state),
        }
        return {case: sdpa_kernel_used(call) for case, call in calls.items()}


def describe_kernels(dtype: torch.dtype) -> str:
    """The SDPA kernels on CUDA in one line; fails when a training call falls back to math."""
    kernels = sdpa_backends("cuda", dtype)
    line = "; ".join(f"{case}: {kernel}" for case, kernel in kernels.items())
    if kernels["causal, no padding"] == "math":
        raise AssertionError(f"attention's training call is unfused: {line}")
    return line


def bf16_train_step(name: str, hparams: dict[str, Any], device: str) -> str:
    """One bf16-autocast training step of a small model with this mixer; raises unless the loss
    and every gradient are finite. Returns the step time."""
    torch.manual_seed(0)
    model = preset_model(name, hparams, vocab=256, d_model=64, max_len=256).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.randint(0, 256, (8, 257), device=device)
    start = time.perf_counter()
    loss = training_step(model, optimizer, batch, autocast=torch.bfloat16)
    if device == "cuda":
        torch.cuda.synchronize()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.isfinite().all()]
    if not loss.isfinite() or bad:
        raise AssertionError(f"loss {loss.item():.3g}, no or non-finite gradient: {bad[:3]}")
    return f"loss {loss.item():.3f}, {1000 * (time.perf_counter() - start):.0f} ms (first step)"


def contract_on_gpu(name: str, hparams: dict[str, Any], autocast: torch.dtype | None) -> str:
    """The whole contract with CUDA as the default device: fp32 without TF32, or under
    ``autocast`` at its tolerance."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tolerance = {"atol": 1e-4} if autocast is None else BF16_TOLERANCE
    with torch.device("cuda"):
        report = check_mixer(name, hparams=hparams, autocast=autocast, **tolerance)
    return f"{report.count('passed')} passed, {report.count('skipped')} skipped"


def train_run(
    out: Path,
    label: str,
    overrides: Sequence[str],
    timeout: float = 900,
    base: Sequence[str] = SMOKE,
) -> str:
    """``mixerlab train`` with ``base`` and these overrides in ``out/label``; raises unless it
    finishes."""
    run_dir = out / label
    command = [sys.executable, "-m", "mixerlab.experiments.cli", "train", *base, *overrides]
    done = subprocess.run(
        [*command, f"hydra.run.dir={run_dir}"], capture_output=True, text=True, timeout=timeout
    )
    status = (read_results(run_dir) or {}).get("status")
    if done.returncode or status != "finished":
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise AssertionError(f"exit {done.returncode}, status {status}: {' | '.join(tail)}")
    return f"finished in {run_dir}"


def last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model's weights in a run's last checkpoint."""
    path = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    return torch.load(path, weights_only=False)["state_dict"]


def relative_gaps(
    actual: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """Per name, the largest difference between the two tensors relative to the expected one's
    largest magnitude; raises when the two hold different names."""
    if actual.keys() != expected.keys():
        raise AssertionError(f"tensors of other names: {sorted(actual.keys() ^ expected.keys())}")
    return {
        name: float((actual[name].float() - value.float()).abs().max())
        / max(float(value.abs().max()), 1e-12)
        for name, value in expected.items()
    }


def ddp_equivalence(out: Path, gpus: int) -> str:
    """Two processes of batch 8 against one of batch 16 on ``DDP_TASK``: on two GPUs over NCCL
    when ``gpus >= 2``, else on two CPU processes over gloo. Raises when a weight differs by more
    than the tolerance, relative to its largest magnitude; returns the largest gap."""
    if gpus >= 2:
        one = ["trainer=gpu", "trainer.precision=32-true"]
        two = ["trainer=ddp", "trainer.devices=2", "trainer.precision=32-true"]
        tolerance = GPU_DDP_TOLERANCE
    else:
        one, two, tolerance = ["trainer=cpu"], ["trainer=ddp_cpu"], CPU_DDP_TOLERANCE
    train_run(out, "ddp_one", [*one, "task.datamodule.batch_size=16"], base=DDP_TASK)
    train_run(out, "ddp_two", [*two, "task.datamodule.batch_size=8"], base=DDP_TASK)
    gaps = relative_gaps(last_weights(out / "ddp_two"), last_weights(out / "ddp_one"))
    worst = max(gaps, key=gaps.__getitem__)
    if gaps[worst] > tolerance:
        raise AssertionError(f"{worst} differs by {gaps[worst]:.3g} of its scale (> {tolerance})")
    return f"largest weight gap {gaps[worst]:.2g} of its scale ({worst}), tolerance {tolerance}"


def _attempt(outcomes: list[Outcome], check: str, fn: Callable[[], str]) -> None:
    """Run one item and record it; a failure is recorded, never raised (the report goes on)."""
    try:
        detail = fn()
    except Exception as err:  # whatever breaks on the GPU is the finding: record it, go on
        first = str(err).strip().splitlines()[:4]
        outcomes.append(Outcome(check, False, f"{type(err).__name__}: {' / '.join(first)}"))
    else:
        outcomes.append(Outcome(check, True, detail))
    mark = "ok  " if outcomes[-1].passed else "FAIL"
    print(f"{mark} {check:<38} {outcomes[-1].detail}", flush=True)


def run_checks(out: Path) -> list[Outcome]:
    """Every item of the module docstring, in order, on the current CUDA device."""
    outcomes: list[Outcome] = []
    presets = mixer_presets()
    for preset, (name, hparams) in presets.items():
        _attempt(
            outcomes,
            f"bf16 train: {preset}",
            lambda name=name, hparams=hparams: bf16_train_step(name, hparams, "cuda"),
        )
    for label, autocast in (("fp32", None), ("bf16", torch.bfloat16)):
        for preset, (name, hparams) in presets.items():
            _attempt(
                outcomes,
                f"contract (cuda, {label}): {preset}",
                lambda name=name, hparams=hparams, autocast=autocast: contract_on_gpu(
                    name, hparams, autocast
                ),
            )
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        _attempt(outcomes, f"sdpa kernels ({label})", lambda dtype=dtype: describe_kernels(dtype))
    _attempt(
        outcomes, "compile=true", lambda: train_run(out, "compile", ["trainer=gpu", "compile=true"])
    )
    gpus = torch.cuda.device_count()
    _attempt(
        outcomes,
        f"ddp equivalence ({'2 GPUs, nccl' if gpus >= 2 else 'CPU, gloo: one GPU here'})",
        lambda: ddp_equivalence(out, gpus),
    )
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mixerlab.experiments.benchmarks.gpu_check", description=__doc__
    )
    parser.add_argument("--out", type=Path, help="run folders (default: a temporary folder)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here (run this on a GPU machine)")
        return 0
    print(f"{torch.cuda.get_device_name()} x{torch.cuda.device_count()}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as scratch:
        outcomes = run_checks(args.out or Path(scratch))
    failed = [o for o in outcomes if not o.passed]
    print(f"\n{len(outcomes) - len(failed)} passed, {len(failed)} failed")
    for outcome in failed:
        print(f"  FAILED {outcome.check}: {outcome.detail}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
