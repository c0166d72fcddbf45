"""The training app end to end: config errors before any work, and real runs through the CLI
(every mixer, the final validation, interrupt and resume, multirun jobs as separate runs)."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_runs import mixerlab
from configs import TINY, compose_config, conf_options
from omegaconf import OmegaConf

from mixerlab.experiments.run.mixer_node import mixer_label
from mixerlab.experiments.run.schema import ConfigError
from mixerlab.experiments.run.train import train


def test_bad_config_fails_before_any_work(tmp_path: Path) -> None:
    cfg = compose_config("model.n_layers=0")
    with pytest.raises(ConfigError, match=r"model\.n_layers must be >= 1"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_monitor_the_task_never_logs_fails_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIXERLAB_CACHE", str(tmp_path / "cache"))
    cfg = compose_config("experiment=mqar", "callbacks.checkpoint.monitor=val/bpb")
    # bits per byte mean nothing on synthetic tokens; the message lists what MQAR does log
    with pytest.raises(ConfigError, match=r"monitor='val/bpb' is not logged.*val/acc@seq_len=128"):
        train(cfg, tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "failed" and results["metrics"] == {}
    assert not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------- end to end, through the CLI
@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Offline W&B, a data cache shared by this module's runs, nothing written into the repo."""
    return {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "MIXERLAB_CACHE": str(tmp_path_factory.mktemp("cache")),
    }


def leet_summary(run_dir: Path) -> dict:
    """Read the offline W&B run back the documented way: `wandb leet inspect --summary --json`."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    proc = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--summary", "--json", str(run_dir / "wandb")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(proc.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("mixer", [m for m in conf_options("mixer") if m != "plugin"])
def test_tiny_training_of_every_mixer(mixer: str, cli_env: dict, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    node = OmegaConf.to_container(compose_config(f"mixer={mixer}").mixer)  # not yet validated
    depth = f"model.n_layers={len(node.get('pattern', [None]))}"  # a hybrid's pattern, once
    argv = ["train", f"mixer={mixer}", *TINY, depth, f"hydra.run.dir={run_dir}"]
    proc = mixerlab(cli_env, tmp_path, *argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "finished" and results["error"] is None
    label = mixer_label(node)  # the option, or a hybrid preset's label
    assert results["mixer"] == label and results["task"] == "text"
    assert results["params"] > 0 and results["flops_per_token"] > 0 and results["tokens_per_s"] > 0
    assert math.isfinite(results["best"]["val/loss"]) and "val/bpb" in results["metrics"]
    assert Path(results["checkpoints"]["last"]).exists()
    assert Path(results["checkpoints"]["best"]).exists()
    assert (run_dir / "metrics.csv").exists()

    summary = leet_summary(run_dir)
    assert summary["run_id"] == results["wandb_run_id"] and summary["state"] == "finished"
    assert summary["config"]["mixer_label"] == label
    assert set(summary["tags"]) >= {label, "text"}
    assert summary["summary"]["val/loss"]["min"] == pytest.approx(results["best"]["val/loss"])
    assert summary["summary"]["params"] == results["params"]
    assert summary["summary"]["tokens_per_s"] == pytest.approx(results["tokens_per_s"])
    assert "train/tokens_per_s" in summary["summary"] and "train/step_time_s" in summary["summary"]


@pytest.mark.slow
def test_bf16_mixed_trains_on_the_cpu(cli_env: dict, tmp_path: Path) -> None:
    """Lightning's bf16-mixed on the CPU: autocast around each step. The LSTM is the mixer
    whose fused kernel had no bf16 path there; every preset's forward and backward under the
    same autocast is checked in tests/mixers/test_bf16.py."""
    run_dir = tmp_path / "run"
    argv = ["train", "mixer=rnn", "trainer.precision=bf16-mixed", *TINY, f"hydra.run.dir={run_dir}"]
    proc = mixerlab(cli_env, tmp_path, *argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert (
        results["status"] == "finished"
        and results["config"]["trainer"]["precision"] == "bf16-mixed"
    )
    assert math.isfinite(results["best"]["val/loss"])


@pytest.mark.slow
def test_a_runs_output_is_its_own_and_its_log_is_kept(cli_env: dict, tmp_path: Path) -> None:
    """Steps (not Lightning's epoch count, "Epoch 0/-2"), the model's FLOPs (not Lightning's
    FLOPs column, which reads 0), no tips or W&B banners; the run's log lines in train.log."""
    run_dir = tmp_path / "run"
    env = {k: v for k, v in cli_env.items() if k != "WANDB_SILENT"}  # W&B as a user sees it
    args = [*TINY, "callbacks.progress_bar=true", f"hydra.run.dir={run_dir}"]
    proc = mixerlab(env, tmp_path, "train", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert re.search(r"^step +━+ 4/4 ", proc.stdout, re.MULTILINE), proc.stdout
    assert "forward FLOPs per token at length 32: " in proc.stderr
    for noise in (
        "Epoch 0/-2",
        "Total FLOPs",
        "FLOPs ┃",
        "Tip:",
        "anonymous setting",
        "Run history",
        "Seed set to",
        "Generating train split",
        "syncing is set to `offline`",
        "TPU available",
        "`Trainer.fit` stopped",
    ):
        assert noise not in output, noise
    log = (run_dir / "train.log").read_text()
    assert "mixerlab: attention on text, " in log and "GPU available: " in log
    assert "mixerlab: finished attention on text" in log and f"run dir   {run_dir}" in log
    results = json.loads((run_dir / "results.json").read_text())
    assert results["tokens_per_s"] > 0 and "train/tokens_per_s" in results["metrics"]
    assert "tokens_per_s" not in results["metrics"]  # the average is top-level only


@pytest.mark.slow
@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_last_step_is_validated_even_off_the_interval(
    cli_env: dict, tmp_path: Path, accumulate: int
) -> None:
    """val_check_interval counts optimizer steps, also when each takes several batches."""
    run_dir = tmp_path / "run"
    overrides = [*TINY, "trainer.max_steps=5", "logger=none", f"hydra.run.dir={run_dir}"]
    overrides.append(f"trainer.accumulate_grad_batches={accumulate}")
    proc = mixerlab(cli_env, tmp_path, "train", *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    val_steps = [float(row["step"]) for row in rows if row.get("val/loss")]
    # Validation after steps 2 and 4 (the interval), then once more after the last step, 5.
    assert len(val_steps) == 3 and val_steps[-1] == max(float(row["step"]) for row in rows)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["metrics"]["val/loss"] == pytest.approx(float(rows[-1]["val/loss"]))


INTERRUPT_HELPER = """
import pytorch_lightning as pl

class InterruptAt(pl.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:  # once: a resumed run goes on from this step
            raise KeyboardInterrupt
"""


@pytest.mark.slow
def test_interrupted_run_resumes_where_it_stopped(cli_env: dict, tmp_path: Path) -> None:
    (tmp_path / "interrupt_helper.py").write_text(INTERRUPT_HELPER)
    env = {**cli_env, "PYTHONPATH": str(tmp_path)}
    run_dir = tmp_path / "run"
    interrupt = "callbacks.extra=[{_target_:interrupt_helper.InterruptAt,step:3}]"
    args = [*TINY, "trainer.max_steps=8", "trainer.val_check_interval=4", interrupt]
    first = mixerlab(env, tmp_path, "train", *args, f"hydra.run.dir={run_dir}")
    assert first.returncode == 130, first.stderr[-3000:]
    assert "Traceback" not in first.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "interrupted"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 3

    second = mixerlab(env, tmp_path, "train", f"resume={run_dir}")
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from {last}" in second.stderr
    resumed = json.loads((run_dir / "results.json").read_text())
    assert resumed["status"] == "finished"
    assert resumed["wandb_run_id"] == results["wandb_run_id"]  # the same W&B run goes on
    assert torch.load(last, weights_only=False)["global_step"] == 8
    with (run_dir / "metrics.csv").open() as f:
        steps = [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]
    # before the interrupt: steps 0-1 (2 stopped before it was logged); after: 3-7, none twice
    assert steps == sorted(set(steps)) and steps[0] == 0 and set(range(3, 8)) <= set(steps)


@pytest.mark.slow
def test_multirun_jobs_are_separate_runs(cli_env: dict, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = mixerlab(
        cli_env, tmp_path, "train", "-m", "mixer=attention,conv", *TINY,
        f"hydra.sweep.dir={sweep_dir}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent for p in sweep_dir.rglob("results.json"))
    assert [p.name for p in runs] == ["0_attention_text", "1_conv_text"]
    ids = {json.loads((p / "results.json").read_text())["wandb_run_id"] for p in runs}
    assert len(ids) == 2
    assert {leet_summary(p)["config"]["mixer"]["name"] for p in runs} == {"attention", "conv"}


@pytest.mark.slow  # the embedded corpus is tokenized once (about 15 s), then a few steps
def test_span_corruption_trains_an_encoder_decoder_on_the_embedded_corpus(
    cli_env: dict, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    argv = [
        "train", "task=span_corruption", "model=encoder_decoder", *TINY,
        "model.encoder.n_layers=1", "logger=none", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    proc = mixerlab(cli_env, tmp_path, *argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "finished" and results["task"] == "span_corruption"
    assert results["config"]["task"]["datamodule"]["source"] == "stdlib"  # the embedded corpus
    assert {"val/loss", "val/acc", "val/exact_acc"} <= set(results["best"])
    assert results["chance"]["val/acc"]["label"] == "unigram"
