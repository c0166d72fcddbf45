"""Benchmarks: speed numbers, never pass/fail tests.

    mixerlab bench reference   # each family vs a PyPI peer, same shape: training and decoding
    mixerlab bench mixers      # training tokens/s, parameters and FLOPs/token of every mixer
    mixerlab bench overhead    # a Lightning training step vs a bare PyTorch loop, same model+batch
    mixerlab bench loader      # data-loader tokens/s vs model tokens/s on the default task
    mixerlab bench peak        # the measured matmul peak FLOP/s (what MFU is reported against)
    mixerlab bench scaling     # every mixer's cost against sequence length
    mixerlab bench compile     # compile=true per mixer preset: start-up, speed-up, numerical gap

Every number is a training step (forward, loss, backward, AdamW step) in fp32 (``scaling``:
``--dtype bf16`` too, and ``--device cuda``; its options are listed under "scaling and peak" in
``--help``); the benchmarks themselves are in ``mixerlab.experiments.benchmarks``. Results are
printed as a table and written to ``<out>/bench-<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from mixerlab.experiments.benchmarks import scaling
from mixerlab.experiments.benchmarks.compiled import bench_compile
from mixerlab.experiments.benchmarks.peers import bench_reference
from mixerlab.experiments.benchmarks.speed import (
    BenchError,
    Shape,
    bench_loader,
    bench_mixers,
    bench_overhead,
)
from mixerlab.lightning_modules.record import write_atomic
from mixerlab.mixers import available_mixers

COMMAND = "bench"
HELP = "speed benchmarks (tokens/s, Lightning overhead, reference models)"

BENCHMARKS = {
    "reference": bench_reference,
    "mixers": bench_mixers,
    "overhead": bench_overhead,
    "loader": bench_loader,
    "peak": scaling.bench_peak,
    "scaling": scaling.bench_scaling,
    "compile": bench_compile,
}
TABLES = {"scaling": scaling.format_table}  # the others print their JSON


def _print_report(name: str, report: dict) -> None:
    print(f"\n== bench {name}")
    print(TABLES[name](report) if name in TABLES else json.dumps(report, indent=2, default=float))


def _int_at_least(lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its error for a non-integer
    return parse


def _int_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need positive integers like 64,128, got {text!r}")
    return sorted(values)


def _positive(kind: type[int] | type[float], zero_ok: bool = False) -> Callable[[str], Any]:
    """An argparse type: a finite number above zero (or at least zero with ``zero_ok``); a
    negative token count or a NaN time limit would run nothing, or forever."""
    bound = "at least 0" if zero_ok else "above 0"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > 0 or (zero_ok and value == 0))):
            raise argparse.ArgumentTypeError(f"need a finite {kind.__name__} {bound}, got {text!r}")
        return value

    return parse


def add_scaling_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``scaling`` and ``peak``."""
    group = parser.add_argument_group("scaling and peak")
    group.add_argument("--lengths", type=_int_list, default=scaling.LENGTHS, help="e.g. 64,128,256")
    count, seconds = _positive(int), _positive(float)
    group.add_argument("--tokens", type=count, default=4096, help="tokens per training batch")
    group.add_argument("--time-limit", type=seconds, default=60.0, help="seconds per point")
    group.add_argument(
        "--min-time",
        type=_positive(float, zero_ok=True),
        default=1.0,
        help="timed seconds per point",
    )
    group.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    dtypes = tuple(scaling.DTYPES)
    group.add_argument("--dtype", choices=dtypes, default="fp32", help="bf16: autocast")
    group.add_argument("--decode-tokens", type=count, default=64, help="tokens decoded per point")
    group.add_argument("--mixers", type=lambda s: s.split(","), help="default: every mixer")
    available = scaling.available_memory_bytes()
    group.add_argument(
        "--memory-gb",
        type=_positive(float),
        default=available / 2**31 if available else None,
        help="CPU: cap on each point's memory, GB (default: half of what is available)",
    )


def _scaling_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the scaling options, or None."""
    if args.device == "cuda" and not torch.cuda.is_available():
        return "--device cuda: no CUDA device here; run on a GPU machine or use --device cpu"
    unknown = sorted(set(args.mixers or ()) - set(available_mixers()))
    if unknown:
        return f"unknown mixer(s) {', '.join(unknown)}; known: {', '.join(available_mixers())}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mixerlab bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run (default all): {', '.join(BENCHMARKS)}",
    )
    positive, count = _int_at_least(1), _int_at_least(0)
    parser.add_argument(
        "--steps", type=positive, default=10, help="timed training steps per repeat"
    )
    parser.add_argument("--warmup", type=count, default=3, help="untimed steps before timing")
    parser.add_argument("--repeats", type=positive, default=3, help="interleaved repeats (median)")
    parser.add_argument(
        "--threads", type=positive, default=os.cpu_count(), help="torch CPU threads"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="JSON output folder")
    for field, default in asdict(Shape()).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=positive, default=default)
    add_scaling_arguments(parser)
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    problem = _scaling_problem(args) if {"peak", "scaling"} & set(names) else None
    if problem:
        parser.error(problem)

    torch.set_num_threads(args.threads)
    shape = Shape(**{field: getattr(args, field) for field in asdict(Shape())})
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        try:
            report = BENCHMARKS[name](shape, args)
        except BenchError as err:
            print(f"mixerlab bench: error: {err}", file=sys.stderr)
            return 2
        meta = {"shape": asdict(shape), "threads": args.threads, "torch": torch.__version__}
        path = args.out / f"bench-{name}.json"
        write_atomic(path, json.dumps({"benchmark": name, **meta, "results": report}, indent=2))
        _print_report(name, report)
        print(f"(written to {path})")
    return 0
