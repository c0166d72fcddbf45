"""The training app: LightningModules, callbacks, results files, W&B wiring, end-to-end runs."""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import hydra
import pytest
import pytorch_lightning as pl
import torch
from configs import compose_config, conf_options
from omegaconf import OmegaConf
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.trainer.states import RunningStage
from torch import nn
from torch.utils.data import DataLoader

from experiments.build import wandb_mode
from experiments.schema import ConfigError
from experiments.train import _summary, train
from lightning_modules.callbacks import TRAINING_FLOPS_PER_FORWARD, ThroughputMonitor
from lightning_modules.modules import (
    ClassificationModule,
    LanguageModelModule,
    WarmupCosine,
    parameter_groups,
)
from lightning_modules.results import HistoryLogger, RunResults
from mixers import SequenceModel

RESULT_FIELDS = {
    "status", "mixer", "task", "seed", "params", "flops_per_token", "metrics", "best",
    "tokens_per_s", "wall_s", "wandb_run_id", "checkpoints", "config", "error", "history",
}  # fmt: skip


# ------------------------------------------------------------------------------ unit pieces
def test_warmup_then_cosine_to_the_floor() -> None:
    schedule = WarmupCosine(warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert schedule(0) == pytest.approx(0.1)
    assert schedule(9) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.55)
    assert schedule(110) == pytest.approx(0.1)
    assert schedule(500) == pytest.approx(0.1)
    assert WarmupCosine(0, None, 0.1)(1000) == 1.0


def test_no_weight_decay_on_norms_biases_and_embeddings() -> None:
    model = SequenceModel(32, 16, 1, mixer="attention", max_len=8)
    decay, no_decay = parameter_groups(model)
    decayed = {id(p) for p in decay["params"]}
    assert id(model.embed.weight) not in decayed  # tied with the head
    assert id(model.pos_embed.weight) not in decayed
    assert id(model.norm.weight) not in decayed
    assert id(model.blocks[0].ffn.up.weight) in decayed
    assert id(model.blocks[0].ffn.up.bias) not in decayed
    assert "weight_decay" not in decay and no_decay["weight_decay"] == 0.0  # the optimiser's
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == model.num_params()


def _optimisation(*overrides: str) -> tuple:
    """The optimiser and scheduler factories ``build_module`` instantiates from the config."""
    optim = OmegaConf.to_container(compose_config(*overrides), resolve=True)["optim"]
    return hydra.utils.instantiate(optim["optimizer"]), hydra.utils.instantiate(optim["scheduler"])


def test_optimiser_and_schedule_are_instantiated_from_the_command_line_keys(
    tmp_path: Path,
) -> None:
    optimizer, scheduler = _optimisation(
        "optim.lr=0.01", "optim.weight_decay=0.2", "optim.betas=[0.8,0.9]",
        "optim.warmup_steps=10", "optim.min_lr_ratio=0.1", "trainer.max_steps=110",
    )  # fmt: skip
    model = SequenceModel(32, 16, 1, mixer="attention", max_len=8)
    module = LanguageModelModule(
        model, optimizer=optimizer, scheduler=scheduler, bytes_per_token=None
    )
    configured = module.configure_optimizers()
    assert configured["lr_scheduler"]["interval"] == "step"
    opt, schedule = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    assert decay["betas"] == (0.8, 0.9)
    assert id(model.embed.weight) in {id(p) for p in no_decay["params"]}
    lrs = []
    for _ in range(112):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.001) and lrs[9] == pytest.approx(0.01)
    assert lrs[60] == pytest.approx(0.0055) and lrs[111] == pytest.approx(0.001)
    # the schedule's state goes into checkpoints, which load tensors and plain values only
    torch.save(schedule.state_dict(), tmp_path / "schedule.pt")
    state = torch.load(tmp_path / "schedule.pt", weights_only=True)
    assert state["lr_lambdas"][0] == {"warmup_steps": 10, "total_steps": 110, "min_ratio": 0.1}


def test_no_scheduler_keeps_the_optimisers_learning_rate() -> None:
    model = SequenceModel(32, 16, 1, mixer="rnn", max_len=8)
    optimizer = functools.partial(torch.optim.SGD, lr=0.5)
    module = LanguageModelModule(model, optimizer=optimizer, bytes_per_token=None)
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.5


def test_history_logger_rewrites_atomically_and_continues(tmp_path: Path) -> None:
    history = HistoryLogger(tmp_path)
    assert isinstance(history, CSVLogger)
    history.log_metrics({"train/loss": 2.0}, step=0)
    history.log_metrics({"val/loss": 1.5, "val/acc": 0.2}, step=1)  # val rows flush at once
    history.log_metrics({"val/loss": 1.7, "val/acc": 0.4}, step=2)
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:2] == ["step", "wall_s"] and len(rows) == 3
    assert history.best() == {"val/loss": 1.5, "val/acc": 0.4}
    assert history.latest()["val/loss"] == 1.7
    resumed = HistoryLogger(tmp_path)
    assert len(resumed.rows) == 3 and resumed.wall_s() >= float(rows[-1]["wall_s"])
    assert not list(tmp_path.glob(".*.tmp"))


def test_history_logger_drops_rows_past_the_resumed_checkpoint(tmp_path: Path) -> None:
    history = HistoryLogger(tmp_path)
    for step in range(6):
        history.log_metrics({"train/loss": 2.0}, step=step)
    history.log_metrics({"val/loss": 0.5}, step=5)
    # killed hard after step 6; the next process resumes from a checkpoint at global step 3
    resumed = HistoryLogger(tmp_path)
    for step in (3, 4):
        resumed.log_metrics({"train/loss": 1.0}, step=step)
    assert [row["step"] for row in resumed.rows] == [0, 1, 2, 3, 4]
    assert resumed.best() == {} and resumed.latest() == {"train/loss": 1.0}
    resumed.flush()
    with (tmp_path / "metrics.csv").open() as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [0, 1, 2, 3, 4]


def test_results_have_exactly_the_contract_fields(tmp_path: Path) -> None:
    assert {f.name for f in fields(RunResults)} == RESULT_FIELDS
    RunResults(
        status="failed", mixer="rnn", task="text", seed=0, params=1, flops_per_token=2.0,
        metrics={"val/loss": math.nan}, best={}, tokens_per_s=math.inf, wall_s=1.0,
        wandb_run_id=None, checkpoints={"last": None, "best": None}, config={}, error="boom",
    ).write(tmp_path)  # fmt: skip
    data = json.loads((tmp_path / "results.json").read_text())  # strict JSON: NaN became null
    assert set(data) == RESULT_FIELDS
    assert data["metrics"]["val/loss"] is None and data["tokens_per_s"] is None
    assert data["history"] == "metrics.csv"


def test_summary_shows_every_validation_set(tmp_path: Path) -> None:
    per_set = {"val/acc@seq_len=64": 0.99, "val/acc@seq_len=128": 0.5}
    results = RunResults(
        status="finished", mixer="attention", task="induction_heads", seed=0, params=1,
        flops_per_token=2.0, metrics={"val/acc": 0.745, **per_set}, best={"val/acc": 0.745},
        tokens_per_s=10.0, wall_s=1.0, wandb_run_id=None, checkpoints={}, config={}, error=None,
    )  # fmt: skip
    lines = _summary(results, tmp_path).splitlines()
    assert "  val/acc@  seq_len=64 0.9900  seq_len=128 0.5000" in lines
    results.metrics = {"val/acc": 0.745}  # one val set: no per-set line
    assert "val/acc@" not in _summary(results, tmp_path)


def test_wandb_mode_env_wins_and_auto_needs_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert wandb_mode("auto") == "offline"
    assert wandb_mode("online") == "online"
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password secret\n")
    assert wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("online") == "disabled"


# ------------------------------------------------------------- modules in a real fit loop
class _ToyData(pl.LightningDataModule):
    """Random tokens; two validation sets so per-set metrics are exercised."""

    def __init__(self, task_type: str = "lm") -> None:
        super().__init__()
        self.task_type, self.vocab_size, self.max_len = task_type, 16, 8
        self.num_classes = 3 if task_type == "classification" else None
        self.val_set_names = ["short", "long"]

    def _loader(self, seed: int) -> DataLoader:
        gen = torch.Generator().manual_seed(seed)
        tokens = torch.randint(1, 16, (8, 8), generator=gen)
        mask = torch.ones(8, 8, dtype=torch.bool)
        mask[:4, 6:] = False  # some right padding
        if self.task_type == "lm":
            target = torch.where(mask, tokens.roll(-1, 1), torch.full_like(tokens, -100))
        else:
            target = torch.randint(0, 3, (8,), generator=gen)
        rows = [
            {"input": tokens[i], "target": target[i], "mask": mask[i]} for i in range(len(tokens))
        ]
        return DataLoader(rows, batch_size=4)  # default collate stacks the dicts' tensors

    def train_dataloader(self) -> DataLoader:
        return self._loader(0)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(1), self._loader(2)]


class _WithAux(nn.Module):
    """A model whose forward sets a differentiable auxiliary loss, like an MoE layer."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.inner, self.vocab_size = model, model.vocab_size

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.inner(tokens, mask)
        self.aux_loss = 0.01 * logits.pow(2).mean()
        return logits

    def num_params(self) -> int:
        return self.inner.num_params()

    def flops_per_token(self, seq_len: int) -> float:
        return self.inner.flops_per_token(seq_len)


ADAMW = functools.partial(torch.optim.AdamW, lr=1e-3)


def _fit(module: pl.LightningModule, data: pl.LightningDataModule, tmp_path: Path) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=4,
        val_check_interval=2,
        logger=HistoryLogger(tmp_path),
        callbacks=[ThroughputMonitor()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    trainer.fit(module, datamodule=data)
    return trainer


def test_language_model_metrics_per_val_set_and_bits_per_byte(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _WithAux(SequenceModel(16, 16, 1, mixer="conv", max_len=8))
    module = LanguageModelModule(
        model, optimizer=ADAMW, bytes_per_token=2.0, val_set_names=["short", "long"]
    )
    metrics = _fit(module, _ToyData(), tmp_path).callback_metrics
    for key in ("val/loss", "val/acc", "val/ppl", "val/bpb", "train/loss", "train/aux_loss"):
        assert key in metrics, key
    assert sorted(module.val_metric_names()) == sorted(k for k in metrics if k.startswith("val/"))
    for name in ("short", "long"):
        assert f"val/acc@{name}" in metrics and f"val/loss@{name}" in metrics
    loss = metrics["val/loss"].item()
    assert metrics["val/bpb"].item() == pytest.approx(loss / math.log(2) / 2.0, rel=1e-5)
    assert metrics["val/ppl"].item() == pytest.approx(math.exp(loss), rel=1e-5)
    per_set = [metrics[f"val/loss@{n}"].item() for n in ("short", "long")]
    assert min(per_set) <= loss <= max(per_set)  # overall = over both sets together
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["step", "wall_s"]
    assert {"tokens_per_s", "step_time_s", "params", "val/acc@short"} <= set(header)
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # one file, at one path


def test_throughput_counts_real_tokens_and_training_flops(tmp_path: Path) -> None:
    model = SequenceModel(16, 16, 1, mixer="attention", max_len=8)
    module = LanguageModelModule(model, optimizer=ADAMW, bytes_per_token=None)
    trainer = _fit(module, _ToyData(), tmp_path)
    (monitor,) = [cb for cb in trainer.callbacks if isinstance(cb, ThroughputMonitor)]
    # 4 steps over 2 batches of 4 rows of 8 tokens; the first batch has 4 rows with 2 padded
    assert monitor._lengths[RunningStage.TRAINING] == 2 * (24 + 32)
    assert monitor.tokens_per_s > 0
    with (tmp_path / "metrics.csv").open() as f:
        rows = [row for row in csv.DictReader(f) if row["tokens_per_s"]]
    assert [int(row["step"]) for row in rows] == [0, 1, 2, 3]  # with train/loss, every step
    per_token = TRAINING_FLOPS_PER_FORWARD * model.flops_per_token(8)
    for row in rows:
        flops_per_s = float(row["train/device/flops_per_sec"])
        assert flops_per_s / float(row["tokens_per_s"]) == pytest.approx(per_token)
        assert row["train/loss"]
    assert "train/device/mfu" not in rows[0]  # no known peak FLOPs on a CPU


def test_classification_module_scores_pooled_logits(tmp_path: Path) -> None:
    model = SequenceModel(16, 16, 1, mixer="rnn", causal=False, max_len=8, num_classes=3)
    module = ClassificationModule(model, optimizer=ADAMW, val_set_names=["short", "long"])
    metrics = _fit(module, _ToyData("classification"), tmp_path).callback_metrics
    assert 0.0 <= metrics["val/acc"].item() <= 1.0
    assert "val/ppl" not in metrics and "val/acc@long" in metrics
    assert sorted(module.val_metric_names()) == sorted(k for k in metrics if k.startswith("val/"))


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
TINY = [
    "debug=default",
    "model.d_model=32",
    "model.n_layers=1",
    "task.datamodule.seq_len=32",
    "task.datamodule.batch_size=4",
    "task.datamodule.max_train_tokens=4096",
    "callbacks.progress_bar=false",
]


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Offline W&B, a data cache shared by this module's runs, nothing written into the repo."""
    return {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "MIXERLAB_CACHE": str(tmp_path_factory.mktemp("cache")),
    }


def mixerlab(env: dict[str, str], cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "experiments.cli", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


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
    proc = mixerlab(cli_env, tmp_path, "train", f"mixer={mixer}", *TINY, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "finished" and results["error"] is None
    assert results["mixer"] == mixer and results["task"] == "text"
    assert results["params"] > 0 and results["flops_per_token"] > 0 and results["tokens_per_s"] > 0
    assert math.isfinite(results["best"]["val/loss"]) and "val/bpb" in results["metrics"]
    assert Path(results["checkpoints"]["last"]).exists()
    assert Path(results["checkpoints"]["best"]).exists()
    assert (run_dir / "metrics.csv").exists()

    summary = leet_summary(run_dir)
    assert summary["run_id"] == results["wandb_run_id"] and summary["state"] == "finished"
    assert summary["config"]["mixer"]["name"] == mixer
    assert set(summary["tags"]) >= {mixer, "text"}
    assert summary["summary"]["val/loss"]["min"] == pytest.approx(results["best"]["val/loss"])
    assert summary["summary"]["params"] == results["params"]
    assert "tokens_per_s" in summary["summary"] and "step_time_s" in summary["summary"]


@pytest.mark.slow
def test_the_last_step_is_validated_even_off_the_interval(cli_env: dict, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    overrides = [*TINY, "trainer.max_steps=5", "logger=none", f"hydra.run.dir={run_dir}"]
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
        if trainer.global_step >= self.step:
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

    second = mixerlab(env, tmp_path, "train", f"resume={run_dir}", "callbacks.extra=[]")
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
