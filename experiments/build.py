"""The parts of one run, each built from the validated config: the task's DataModule, the model,
the LightningModule, loggers and callbacks. ``experiments.train`` puts them together."""

from __future__ import annotations

import json
import netrc
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import hydra
import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger

from experiments.schema import ConfigError
from lightning_modules.callbacks import CheckpointOnInterrupt, ProgressBar, ThroughputMonitor
from lightning_modules.metric_names import higher_is_better
from lightning_modules.modules import ClassificationModule, LanguageModelModule
from lightning_modules.results import RESULTS_FILE, HistoryLogger
from mixers import SequenceModel

CHECKPOINT_DIR = "checkpoints"


def build_datamodule(config: dict[str, Any]) -> pl.LightningDataModule:
    """The task's DataModule, prepared and set up for fitting."""
    spec = dict(config["task"]["datamodule"])
    dm = hydra.utils.instantiate(  # _convert_: plain lists/dicts, not OmegaConf containers
        spec, seed=config["seed"], cache_dir=config["cache_dir"], _convert_="all"
    )
    dm.prepare_data()
    dm.setup("fit")
    if dm.task_type != config["task"]["type"]:
        raise ConfigError(
            f"task.type={config['task']['type']!r} but {spec['_target_']} produces "
            f"{dm.task_type!r} batches; set task.type={dm.task_type}"
        )
    return dm


def build_model(config: dict[str, Any], dm: pl.LightningDataModule) -> SequenceModel:
    """The SequenceModel for this task: vocabulary, length and head come from the DataModule."""
    mixer = dict(config["mixer"])
    return SequenceModel(
        dm.vocab_size,
        mixer=mixer.pop("name"),
        mixer_hparams=mixer,
        causal=config["task"]["causal"],
        max_len=dm.max_len,
        num_classes=dm.num_classes,
        **config["model"],
    )


def build_module(
    config: dict[str, Any], model: SequenceModel, dm: pl.LightningDataModule
) -> pl.LightningModule:
    optim = config["optim"]
    kwargs = {
        "lr": optim["lr"],
        "warmup_steps": optim["warmup_steps"],
        "weight_decay": optim["weight_decay"],
        "betas": tuple(optim["betas"]),
        "min_lr_ratio": optim["min_lr_ratio"],
        "val_set_names": dm.val_set_names,
        "compile": config["compile"],
    }
    if dm.task_type == "classification":
        return ClassificationModule(model, **kwargs)
    return LanguageModelModule(model, bytes_per_token=dm.bytes_per_token, **kwargs)


def wandb_mode(configured: str) -> str:
    """The W&B mode to run in: ``WANDB_MODE`` wins, then the config; ``auto`` means online only
    when credentials exist (``WANDB_API_KEY`` or a netrc entry), checked without network calls."""
    env = os.environ.get("WANDB_MODE")
    if env:
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    if configured != "auto":
        return configured
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        found = netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        found = False
    return "online" if found else "offline"


def build_loggers(
    config: dict[str, Any],
    run_dir: Path,
    dm: pl.LightningDataModule,
    val_metrics: Sequence[str],
    history: HistoryLogger,
) -> list[Logger]:
    """metrics.csv always; plus W&B or Lightning's CSVLogger as ``logger.kind`` says; W&B
    summarises each of ``val_metrics`` by its best and last value."""
    settings = config["logger"]
    loggers: list[Logger] = [history]
    if settings["kind"] == "csv":
        loggers.append(CSVLogger(run_dir, name="csv", version=""))
    elif settings["kind"] == "wandb":
        previous = _previous_results(run_dir)
        mixer, task = config["mixer"]["name"], config["task"]["name"]
        wandb_logger = WandbLogger(
            project=settings["project"],
            entity=settings["entity"],
            name=f"{mixer}-{task}-seed{config['seed']}",
            save_dir=str(run_dir),
            id=previous.get("wandb_run_id"),  # a resumed run continues its W&B run
            group=settings["group"],
            tags=[mixer, task, *settings["tags"]],
            job_type=settings["job_type"],
            mode=wandb_mode(settings["mode"]),
            config={**config, "data_fingerprint": dm.fingerprint},
        )
        run = wandb_logger.experiment
        for metric in val_metrics:
            best = "max" if higher_is_better(metric) else "min"
            run.define_metric(metric, step_metric="trainer/global_step", summary=f"{best},last")
        loggers.append(wandb_logger)
    return loggers


def check_monitor(monitor: str, val_metrics: Sequence[str]) -> None:
    """Lightning finds a monitor that is never logged only at the first validation, after that
    much training; the module knows its metric names before the first step."""
    logged = [*val_metrics, "train/loss"]
    if monitor not in logged:
        raise ValueError(
            f"callbacks.checkpoint.monitor={monitor!r} is not logged by this task and model; "
            f"choose one of: {', '.join(logged)}"
        )


def build_callbacks(config: dict[str, Any], run_dir: Path) -> list[pl.Callback]:
    settings = config["callbacks"]
    ckpt = settings["checkpoint"]
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(
            dirpath=run_dir / CHECKPOINT_DIR,
            filename="best",
            monitor=ckpt["monitor"],
            mode="max" if higher_is_better(ckpt["monitor"]) else "min",
            save_last=ckpt["save_last"],
            save_top_k=ckpt["save_top_k"],
            every_n_train_steps=ckpt["every_n_train_steps"],
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        CheckpointOnInterrupt(run_dir / CHECKPOINT_DIR),
        ThroughputMonitor(window=config["trainer"]["log_every_n_steps"]),
    ]
    if settings["progress_bar"]:
        callbacks.append(ProgressBar())
    callbacks.extend(hydra.utils.instantiate(spec) for spec in settings["extra"])
    return callbacks


def _previous_results(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RESULTS_FILE
    return json.loads(path.read_text()) if path.exists() else {}
