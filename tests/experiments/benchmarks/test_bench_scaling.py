"""``mixerlab bench scaling`` and ``peak``: what a point measures, how a point that fails stops
its mixer, the table and plot, and the command line. Speeds themselves are never asserted."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from mixerlab.experiments.benchmarks import scaling as bench_scaling
from mixerlab.experiments.cli.bench import add_scaling_arguments
from mixerlab.experiments.cli.bench import main as bench_main


def settings(tmp_path: Path, **changes) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_scaling_arguments(parser)
    args = parser.parse_args(
        ["--lengths", "8,16", "--tokens", "16", "--min-time", "0", "--decode-tokens", "3"]
    )
    return argparse.Namespace(**{**vars(args), "threads": 1, "out": tmp_path, **changes})


def test_a_point_measures_training_memory_flops_prefill_and_decoding(tmp_path: Path) -> None:
    point = bench_scaling.measure_point("conv", 8, settings(tmp_path))
    assert point["length"] == 8 and point["batch_size"] == 2  # 16 tokens per batch
    for key in ("tokens_per_s", "step_ms", "flops_per_token", "prefill_ms", "decode_ms"):
        assert point[key] > 0, key
    assert point["memory_mb"] >= 0
    assert point["tokens_per_s"] == pytest.approx(16 / (point["step_ms"] / 1000))
    assert point["train_flops_per_s"] == pytest.approx(
        3 * point["flops_per_token"] * point["tokens_per_s"]
    )


def raises_memory_error() -> None:
    raise MemoryError


def raises_value_error() -> None:
    raise ValueError("bad hyper-parameter")


def sleeps() -> None:
    time.sleep(60)


def killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def allocates_a_gigabyte() -> None:
    bench_scaling.torch.ones(2**28)


def returns_a_value() -> dict:
    return {"answer": 42}


@pytest.mark.parametrize(
    ("fn", "result", "reason"),
    [
        (returns_a_value, {"answer": 42}, None),
        (raises_memory_error, None, "out of memory"),
        (raises_value_error, None, "error: ValueError('bad hyper-parameter')"),
        (sleeps, None, "time limit (2 s)"),
        (killed, None, "killed by signal 9"),
        (allocates_a_gigabyte, None, "out of memory"),
    ],
    ids=["ok", "oom", "error", "time-limit", "killed", "capped"],
)
def test_an_isolated_point_reports_why_it_stopped(tmp_path: Path, fn, result, reason) -> None:
    limit = 2.0 if fn is sleeps else 60.0
    args = settings(tmp_path, time_limit=limit, memory_gb=0.25)  # the cap: 0.25 GB more
    assert bench_scaling.run_isolated(fn, (), args) == (result, reason)


def fake_point(length: int, decode_ms: float) -> dict:
    return {
        "length": length,
        "batch_size": 4096 // length,
        "tokens_per_s": 1e4,
        "memory_mb": length / 10,
        "flops_per_token": 1e6,
        "mfu": 0.1,
        "prefill_ms": 1.0,
        "decode_ms": decode_ms,
    }


def test_decode_growth_compares_the_prompt_of_2048_with_the_shortest() -> None:
    points = [fake_point(64, 2.0), fake_point(2048, 3.0), fake_point(4096, 9.0)]
    assert bench_scaling.decode_growth(points) == {"from": 64, "to": 2048, "ratio": 1.5}
    assert bench_scaling.decode_growth(points[:1]) is None


def test_the_table_and_the_plot_show_every_mixer(tmp_path: Path) -> None:
    report = {
        "settings": {"tokens": 4096, "device": "cpu", "dtype": "fp32"},
        "mixers": {
            "rnn": {"points": [fake_point(64, 2.0), fake_point(128, 2.1)], "stopped": None},
            "gmlp": {"points": [fake_point(64, 2.0)], "stopped": "out of memory at length 128"},
        },
    }
    for result in report["mixers"].values():
        result["decode_growth"] = bench_scaling.decode_growth(result["points"])
    table = bench_scaling.format_table(report)
    assert len(re.findall(r"^rnn +\d+ ", table, re.MULTILINE)) == 2
    assert "rnn              decode per token: 1.05x (128 vs 64); stopped: -" in table
    assert "gmlp             decode per token: -; stopped: out of memory at length 128" in table
    bench_scaling.plot_scaling(report, tmp_path / "plot" / "scaling.png")
    assert (tmp_path / "plot" / "scaling.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["scaling", "--mixers", "conv,nope"], "unknown mixer(s) nope"),
        (["peak", "--lengths", "64,0"], "need positive integers"),
        (["scaling", "--tokens", "-5"], "--tokens: need a finite int above 0, got '-5'"),
        (["scaling", "--time-limit", "nan"], "--time-limit: need a finite float above 0"),
        (["scaling", "--memory-gb", "-1"], "--memory-gb: need a finite float above 0"),
    ],
)
def test_bad_options_are_one_clear_message_and_exit_2(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(bench_scaling.torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_device_is_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        bench_main(["scaling", "--device", "cuda"])
    assert "no CUDA device here" in capsys.readouterr().err


@pytest.mark.slow
def test_the_scaling_bench_end_to_end_writes_json_table_and_plot(tmp_path: Path, capsys) -> None:
    argv = ["scaling", "--lengths", "8,16", "--tokens", "16", "--mixers", "conv,rnn"]
    argv += ["--min-time", "0", "--decode-tokens", "2", "--threads", "1", "--out", str(tmp_path)]
    assert bench_main(argv) == 0
    report = json.loads((tmp_path / "bench-scaling.json").read_text())["results"]
    assert report["peak"]["flops_per_s"] > 0
    assert [p["length"] for p in report["mixers"]["rnn"]["points"]] == [8, 16]
    assert report["mixers"]["conv"]["decode_growth"]["to"] == 16
    assert (tmp_path / "scaling.png").exists()
    assert "decode per token" in capsys.readouterr().out
