"""Cost against length: ``mixerlab bench scaling`` and ``mixerlab bench peak``.

``scaling`` holds one model shape (d_model 128, 2 layers, MLP channel mixer, learned positions,
byte vocabulary) and a fixed number of tokens per training batch (batch = tokens // length), and
sweeps the sequence length for every registered mixer, built-ins and plugins. Each point reports:

- training tokens/s (forward, loss, backward, AdamW step), timed over as many steps as fit in
  ``--min-time`` seconds (1 to 5) after one warm-up step;
- peak memory of that point: on CPU the growth of the process's peak resident set
  (``ru_maxrss``) over the point, model, optimiser state and activations included; on CUDA
  ``torch.cuda.max_memory_allocated``;
- the model's analytic forward FLOPs/token and the MFU they imply: 3 x FLOPs/token x tokens/s
  (backward costs about twice the forward) over the measured matmul peak of ``peak``;
- prefill time of one prompt of that length, and decoding time per token for the
  ``--decode-tokens`` tokens after it (batch 1, ``SequenceModel.prefill`` then ``step``).

Every point runs in its own process, forked from a fork server that has imported torch and
mixerlab and computed nothing (a process forked after OpenMP has run can hang), so memory is
measured per point, a crash or an out-of-memory error ends that point only, and a point past
``--time-limit`` is killed. A mixer stops at its first point that fails, and the reason is
recorded. On CPU each point's address space is capped (``--memory-gb``, default half of the
memory available at the start), so a long length fails with an allocation error instead of
waking the kernel's OOM killer on a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import resource
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mixerlab.experiments.benchmarks.training_step import training_step
from mixerlab.mixers import SequenceModel, available_mixers

D_MODEL, N_LAYERS, VOCAB = 128, 2, 256
LENGTHS = [64 * 2**i for i in range(7)]  # 64 .. 4096
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def _autocast(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    if DTYPES[args.dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(args.device, dtype=DTYPES[args.dtype])


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str) -> float:
    """Seconds one call of fn takes, the device's queue drained before and after."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def peak_matmul(args: argparse.Namespace) -> dict[str, Any]:
    """The best FLOP/s of a square matmul in the bench's device and dtype (2 n^3 FLOPs each)."""
    n = 4096 if args.device == "cuda" else 1024
    dtype = DTYPES[args.dtype] or torch.float32
    a = torch.randn(n, n, device=args.device, dtype=dtype)
    a @ a  # warm-up: kernel selection, thread pool
    best = min(_timed(lambda: a @ a, args.device) for _ in range(10))
    return {"flops_per_s": 2 * n**3 / best, "size": n, "device": args.device, "dtype": args.dtype}


def measure_point(mixer: str, length: int, args: argparse.Namespace) -> dict[str, Any]:
    """One (mixer, length) point: training speed and memory, FLOPs, prefill and decoding."""
    device = args.device
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.manual_seed(0)
    max_len = length + args.decode_tokens
    model = SequenceModel(VOCAB, D_MODEL, N_LAYERS, mixer=mixer, max_len=max_len).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randint(0, VOCAB, (max(1, args.tokens // length), length + 1), device=device)
    batch_size, tokens = batch.shape[0], batch[:, 1:].numel()

    def train_step() -> None:
        training_step(model, optimizer, batch, autocast=DTYPES[args.dtype])

    train_step()  # warm-up: allocates the gradients and AdamW's moments
    elapsed, steps = 0.0, 0
    while steps < 5 and (steps == 0 or elapsed < args.min_time):
        elapsed += _timed(train_step, device)
        steps += 1
    if device == "cuda":
        memory = torch.cuda.max_memory_allocated()
    else:  # ru_maxrss is in KiB on Linux
        memory = 1024 * (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_start)
    tokens_per_s = tokens * steps / elapsed
    flops = model.flops_per_token(length)
    point = {
        "length": length,
        "batch_size": batch_size,
        "params": model.num_params(),
        "tokens_per_s": tokens_per_s,
        "step_ms": 1000 * elapsed / steps,
        "memory_mb": memory / 2**20,
        "flops_per_token": flops,
        "train_flops_per_s": 3 * flops * tokens_per_s,
    }
    if model.supports_step:
        point.update(measure_decoding(model, length, args))
    return point


def measure_decoding(model: SequenceModel, length: int, args: argparse.Namespace) -> dict:
    """Prefill one prompt of ``length`` tokens, then step ``decode_tokens`` greedy tokens."""
    model.eval()
    prompt = torch.randint(0, VOCAB, (1, length), device=args.device)
    state: Any = None

    def prefill() -> None:
        nonlocal state
        state = model.prefill(prompt)

    def decode() -> None:
        logits, decoding = state
        token = logits[:, -1].argmax(-1)
        for _ in range(args.decode_tokens):
            logits, decoding = model.step(token, decoding)
            token = logits.argmax(-1)

    with torch.no_grad(), _autocast(args):
        model.step(prompt[:, 0], model.prefill(prompt[:, :1])[1])  # warm-up
        prefill_s = _timed(prefill, args.device)
        decode_s = _timed(decode, args.device)
    return {"prefill_ms": 1000 * prefill_s, "decode_ms": 1000 * decode_s / args.decode_tokens}


def _out_of_memory(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, MemoryError) or "out of memory" in text or "can't allocate" in text


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), or None where it cannot be read."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def _cap_address_space(extra_bytes: int) -> None:
    """Let this process map at most ``extra_bytes`` more than it has mapped now (Linux)."""
    with contextlib.suppress(OSError, ValueError):
        mapped = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (mapped + extra_bytes, resource.RLIM_INFINITY))


def _child(conn: Any, fn: Callable[..., Any], fn_args: tuple, args: argparse.Namespace) -> None:
    """Run fn(*fn_args) in this process and send ("ok", result) or ("failed", reason)."""
    torch.set_num_threads(args.threads)
    if args.device == "cpu" and args.memory_gb:
        _cap_address_space(int(args.memory_gb * 2**30))
    try:
        conn.send(("ok", fn(*fn_args)))
    except Exception as err:  # a point's failure is data, not a crash of the bench
        reason = "out of memory" if _out_of_memory(err) else f"error: {err!r:.200}"
        if not reason.startswith("out"):
            traceback.print_exc()
        conn.send(("failed", reason))


def _context() -> multiprocessing.context.BaseContext:
    """A fork server preloaded with torch and mixerlab where there is one, else spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["torch", "mixerlab.mixers", "mixerlab.experiments.benchmarks.scaling"]
    )
    return context


def run_isolated(
    fn: Callable[..., Any], fn_args: tuple, args: argparse.Namespace
) -> tuple[Any, str | None]:
    """fn(*fn_args) in a fresh process within ``args.time_limit`` seconds: (result, None), or
    (None, why it stopped: out of memory, time limit, killed, error)."""
    context = _context()
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, fn, fn_args, args))
    process.start()
    send.close()  # the child holds the only writing end: its death reads as EOF here
    if not receive.poll(args.time_limit):
        process.kill()
        process.join()
        return None, f"time limit ({args.time_limit:g} s)"
    try:
        status, value = receive.recv()
    except EOFError:  # the process died without a word: the OOM killer, a segfault
        process.join()
        code = process.exitcode
        return None, f"killed by signal {-code}" if code and code < 0 else f"exit code {code}"
    process.join()
    return (value, None) if status == "ok" else (None, value)


# the options a scaling report records with its results
SETTINGS = ("lengths", "tokens", "time_limit", "min_time", "device", "dtype", "decode_tokens")


def bench_peak(shape: Any, args: argparse.Namespace) -> dict[str, Any]:
    """``mixerlab bench peak``: the measured matmul peak that MFU is reported against."""
    result, failure = run_isolated(peak_matmul, (args,), args)
    if failure:
        raise RuntimeError(f"the matmul peak could not be measured: {failure}")
    return result


def bench_scaling(shape: Any, args: argparse.Namespace) -> dict[str, Any]:
    """``mixerlab bench scaling``: every mixer over the lengths; prints a row per point as it
    goes, draws ``scaling.png`` next to the JSON and returns the report. ``shape`` (the other
    benchmarks' shape) is not used: this bench holds its own (module constants)."""
    peak = bench_peak(shape, args)
    report: dict[str, Any] = {
        "shape": {"d_model": D_MODEL, "n_layers": N_LAYERS, "vocab": VOCAB},
        "settings": {key: getattr(args, key) for key in SETTINGS},
        "peak": peak,
        "mixers": {},
    }
    print(f"matmul peak: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s ({args.device}, {args.dtype})")
    print(HEADER, flush=True)
    for mixer in args.mixers or available_mixers():
        points, stopped = [], None
        for length in args.lengths:
            point, failure = run_isolated(measure_point, (mixer, length, args), args)
            if failure:
                stopped = f"{failure} at length {length}"
                print(f"{mixer:<17}{length:>6}  stopped: {failure}", flush=True)
                break
            point["mfu"] = point["train_flops_per_s"] / peak["flops_per_s"]
            points.append(point)
            print(_row(mixer, point), flush=True)
        report["mixers"][mixer] = {"points": points, "stopped": stopped}
        report["mixers"][mixer]["decode_growth"] = decode_growth(points)
    plot_path = args.out / "scaling.png"
    plot_scaling(report, plot_path)
    print(f"(plot written to {plot_path})")
    return report


def decode_growth(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Decoding time per token after the longest prompt of at most 2048 tokens over that after
    the shortest prompt: under 2 for every mixer whose step cost is fixed."""
    timed = [p for p in points if "decode_ms" in p and p["length"] <= 2048]
    if len(timed) < 2:
        return None
    short, long = timed[0], timed[-1]
    return {
        "from": short["length"],
        "to": long["length"],
        "ratio": long["decode_ms"] / short["decode_ms"],
    }


HEADER = (
    f"{'mixer':<17}{'length':>6}{'batch':>6}{'tokens/s':>10}{'memory MB':>11}"
    f"{'MFLOP/tok':>11}{'MFU %':>7}{'prefill ms':>11}{'decode ms':>10}"
)


def _row(mixer: str, p: dict[str, Any]) -> str:
    decoding = (
        f"{p['prefill_ms']:>11.1f}{p['decode_ms']:>10.2f}" if "decode_ms" in p else "  (no step)"
    )
    return (
        f"{mixer:<17}{p['length']:>6}{p['batch_size']:>6}{p['tokens_per_s']:>10.0f}"
        f"{p['memory_mb']:>11.0f}{p['flops_per_token'] / 1e6:>11.2f}{100 * p['mfu']:>7.2f}"
        + decoding
    )


def format_table(report: dict[str, Any]) -> str:
    """Every point as a row, then each mixer's stop reason and decoding growth."""
    lines = [HEADER]
    for mixer, result in report["mixers"].items():
        lines += [_row(mixer, point) for point in result["points"]]
    lines.append("")
    for mixer, result in report["mixers"].items():
        growth = result["decode_growth"]
        ratio = f"{growth['ratio']:.2f}x ({growth['to']} vs {growth['from']})" if growth else "-"
        lines.append(f"{mixer:<17}decode per token: {ratio}; stopped: {result['stopped'] or '-'}")
    return "\n".join(lines)


def plot_scaling(report: dict[str, Any], path: Path) -> None:
    """Three log-log panels, one line per mixer: tokens/s and memory against length, decoding
    time per token against the position it starts from."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("tokens_per_s", "training tokens/s"),
        ("memory_mb", "peak memory (MB)"),
        ("decode_ms", "decode ms/token after the prompt"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for mixer, result in report["mixers"].items():
            points = [p for p in result["points"] if p.get(key)]
            if points:
                xs, ys = [p["length"] for p in points], [p[key] for p in points]
                ax.plot(xs, ys, marker="o", label=mixer)
        ax.set(xscale="log", yscale="log", xlabel="sequence length (prompt length)", ylabel=label)
        ax.set_xscale("log", base=2)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    settings = report["settings"]
    fig.suptitle(
        f"d_model {D_MODEL}, {N_LAYERS} layers, {settings['tokens']} tokens/batch, "
        f"{settings['device']} {settings['dtype']}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
