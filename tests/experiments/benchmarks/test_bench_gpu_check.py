"""experiments/benchmarks/gpu_check.py, the parts that run without a GPU: the presets it checks,
the bf16 training step, the SDPA kernel probe, the report that records a failure and goes on, the
training-run item, and the clean exit with no CUDA (its DDP item runs on two CPU processes in
tests/end_to_end/test_ddp_cpu.py)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from mixerlab.experiments.benchmarks import gpu_check
from mixerlab.experiments.benchmarks.presets import mixer_presets


def test_every_shipped_preset_is_checked_as_a_run_builds_it() -> None:
    presets = mixer_presets()
    shipped = {p.name.removesuffix(".yaml") for p in (files("mixerlab.conf") / "mixer").iterdir()}
    assert set(presets) == shipped - {"plugin"}
    assert presets["attention"][0] == "attention"
    name, hparams = presets["mamba"]  # a family member: the registered name and its variant
    assert (name, hparams["selective"]) == ("ssm", True)
    name, hparams = presets["based_sliding"]
    assert name == "hybrid" and len(hparams["pattern"]) == 3


def test_the_bf16_training_step_runs_a_hybrid_on_the_cpu() -> None:
    name, hparams = mixer_presets()["based_sliding"]  # its pattern sets the depth: 3
    assert gpu_check.bf16_train_step(name, hparams, "cpu").startswith("loss ")


def test_the_probe_names_the_kernel_sdpa_runs() -> None:
    q = torch.randn(1, 2, 8, 4)
    assert gpu_check.sdpa_kernel_used(lambda: q + 1) == "none"
    with sdpa_kernel([SDPBackend.MATH]):
        assert gpu_check.sdpa_kernel_used(lambda: F.scaled_dot_product_attention(q, q, q)) == "math"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_calls_are_probed_in_training_padding_and_decoding(dtype: torch.dtype) -> None:
    kernels = gpu_check.sdpa_backends("cpu", dtype)
    assert set(kernels) == {"causal, no padding", "padded batch", "decoding step"}
    assert set(kernels.values()) <= set(gpu_check.SDPA_KERNELS)


def test_a_failing_item_is_recorded_and_the_report_goes_on(capsys) -> None:
    outcomes: list[gpu_check.Outcome] = []

    def broken() -> str:
        raise RuntimeError("CUDA error: an illegal memory access\nsecond line")

    gpu_check._attempt(outcomes, "bf16 train: x", broken)
    gpu_check._attempt(outcomes, "bf16 train: y", lambda: "loss 5.5")
    assert [(o.check, o.passed) for o in outcomes] == [
        ("bf16 train: x", False),
        ("bf16 train: y", True),
    ]
    assert outcomes[0].detail == "RuntimeError: CUDA error: an illegal memory access / second line"
    assert "FAIL bf16 train: x" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_and_exits_0(capsys) -> None:
    assert gpu_check.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out


@pytest.mark.slow
def test_a_training_item_fails_with_the_run_s_last_words(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=r"exit 2, status None: .*mixer.n_head"):
        gpu_check.train_run(tmp_path, "bad", ["trainer=cpu", "+mixer.n_head=2"], timeout=300)
    assert "finished" in gpu_check.train_run(tmp_path, "cpu", ["trainer=cpu", "debug=default"])
