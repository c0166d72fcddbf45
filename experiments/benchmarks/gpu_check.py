"""The GPU path in one go:
``python -m mixerlab.experiments.benchmarks.gpu_check [--out DIR]``.

On a CUDA machine it runs each of these and prints one report of what passed and what failed:

1. ``bf16 train``: every registered mixer's training step (forward, loss, backward, AdamW) under
   bf16 autocast on a small model: the loss and every gradient must be finite.
2. ``contract``: the whole mixer contract (``mixerlab.mixers.testing.check_mixer``) for every
   mixer in fp32 on the GPU (``with torch.device("cuda")``), TF32 off so that fp32 means fp32;
   atol 1e-4, since GPU kernels sum in other orders than the CPU's.
3. ``sdpa``: which kernel ``F.scaled_dot_product_attention`` runs for attention's calls: training
   without padding (``is_causal``), a padded batch (a boolean mask), one decoding step over the
   KV cache, in fp32 and bf16. Found by profiling which ``aten::_scaled_dot_product_*`` operator
   runs: flash, efficient (memory-efficient), cudnn or math (the unfused fallback).
4. ``compile``: ``mixerlab train experiment=smoke trainer=gpu compile=true`` for a few steps.
5. ``ddp``: ``mixerlab train experiment=smoke trainer=ddp trainer.devices=2``: two processes on
   two GPUs, or, where there is one GPU (NCCL takes one GPU per process), two CPU processes over
   gloo, which still checks the DDP wiring (samplers, gathered metrics, rank-0 writes).

Exit status 0 when everything passed, 1 when something failed. Without a CUDA device it prints
"no CUDA device" and exits 0, so it can sit in any script. The SDPA probe runs on the CPU too
(``sdpa_backends("cpu", ...)``), which is how its tests run here.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from mixerlab.experiments.benchmarks.training_step import training_step
from mixerlab.lightning_modules.record import read_results
from mixerlab.mixers import SequenceModel, available_mixers, build_mixer
from mixerlab.mixers.testing import check_mixer

SDPA_KERNELS = ("flash", "efficient", "cudnn", "math")  # as the aten operators name them
SMOKE = ["experiment=smoke", "logger=csv", "trainer.max_steps=10", "trainer.val_check_interval=5"]


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


def bf16_train_step(name: str, device: str) -> str:
    """One bf16-autocast training step of a small model with this mixer; raises unless the loss
    and every gradient are finite. Returns the step time."""
    torch.manual_seed(0)
    model = SequenceModel(256, 64, 2, mixer=name, max_len=256).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.randint(0, 256, (8, 257), device=device)
    start = time.perf_counter()
    loss = training_step(model, optimizer, batch, autocast=torch.bfloat16)
    torch.cuda.synchronize()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.isfinite().all()]
    if not loss.isfinite() or bad:
        raise AssertionError(f"loss {loss.item():.3g}, no or non-finite gradient: {bad[:3]}")
    return f"loss {loss.item():.3f}, {1000 * (time.perf_counter() - start):.0f} ms (first step)"


def contract_on_gpu(name: str) -> str:
    """The whole contract for ``name`` with CUDA as the default device, fp32 without TF32."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with torch.device("cuda"):
        report = check_mixer(name, atol=1e-4)
    return f"{report.count('passed')} passed, {report.count('skipped')} skipped"


def train_run(out: Path, label: str, overrides: list[str], timeout: float = 900) -> str:
    """``mixerlab train`` with these overrides in ``out/label``; raises unless it finishes."""
    run_dir = out / label
    command = [sys.executable, "-m", "mixerlab.experiments.cli", "train", *SMOKE, *overrides]
    done = subprocess.run(
        [*command, f"hydra.run.dir={run_dir}"], capture_output=True, text=True, timeout=timeout
    )
    status = (read_results(run_dir) or {}).get("status")
    if done.returncode or status != "finished":
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise AssertionError(f"exit {done.returncode}, status {status}: {' | '.join(tail)}")
    return f"finished in {run_dir}"


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
    for name in available_mixers():
        _attempt(outcomes, f"bf16 train: {name}", lambda name=name: bf16_train_step(name, "cuda"))
    for name in available_mixers():
        _attempt(
            outcomes, f"contract (cuda, fp32): {name}", lambda name=name: contract_on_gpu(name)
        )
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        _attempt(outcomes, f"sdpa kernels ({label})", lambda dtype=dtype: describe_kernels(dtype))
    _attempt(
        outcomes, "compile=true", lambda: train_run(out, "compile", ["trainer=gpu", "compile=true"])
    )
    ddp = ["trainer=ddp", "trainer.devices=2"]
    if torch.cuda.device_count() < 2:  # NCCL wants a GPU per process: two CPU processes instead
        ddp += ["trainer.accelerator=cpu", "trainer.precision=32-true"]
    gpus = min(torch.cuda.device_count(), 2)
    _attempt(
        outcomes,
        f"ddp, 2 processes ({'2 GPUs' if gpus == 2 else 'CPU, gloo'})",
        lambda: train_run(out, "ddp", ddp),
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
