"""The parts of one run, each built from the validated config: the task's DataModule, the model,
the LightningModule, loggers and callbacks. ``mixerlab.experiments.train`` puts them together."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from pytorch_lightning.loggers import Logger

from mixerlab.experiments.budget import size_model
from mixerlab.experiments.config_types import unknown_arguments
from mixerlab.experiments.mixer_config import mixer_label
from mixerlab.experiments.schema import ConfigError
from mixerlab.experiments.wandb_setup import wandb_mode
from mixerlab.lightning_modules.callbacks import (
    CheckpointOnInterrupt,
    ProgressBar,
    StopOnDivergence,
    ThroughputMonitor,
)
from mixerlab.lightning_modules.metric_names import mode_of
from mixerlab.lightning_modules.modules import ClassificationModule, LanguageModelModule
from mixerlab.lightning_modules.results import CHECKPOINT_DIR, RESULTS_FILE, HistoryLogger
from mixerlab.lightning_modules.resume import ResumeState
from mixerlab.lightning_modules.tasks import TaskDataModule, build_task
from mixerlab.mixers import SequenceModel


def build_datamodule(config: dict[str, Any]) -> TaskDataModule:
    """The registered task's DataModule, prepared and set up for fitting."""
    task = config["task"]
    dm = build_task(
        task["name"], seed=config["seed"], cache_dir=config["cache_dir"], **task["datamodule"]
    )
    dm.prepare_data()
    dm.setup("fit")
    dm.check_ready()
    return dm


def build_model(config: dict[str, Any], dm: TaskDataModule) -> SequenceModel:
    """The SequenceModel for this task: vocabulary, length, causality and head come from it, and
    its width from ``model.budget`` when one is set (:mod:`mixerlab.experiments.budget`)."""
    return SequenceModel(**size_model(config, dm).arguments)


def build_module(
    config: dict[str, Any], model: SequenceModel, dm: pl.LightningDataModule
) -> pl.LightningModule:
    """The task type's LightningModule, with the optimiser and LR schedule ``optim`` names."""
    optim = config["optim"]
    kwargs = {
        "optimizer": _factory(optim, "optimizer"),
        "scheduler": _factory(optim, "scheduler"),
        "val_set_names": dm.val_set_names,
        "compile": config["compile"],
    }
    if dm.task_type == "classification":
        return ClassificationModule(model, **kwargs)
    return LanguageModelModule(model, bytes_per_token=dm.bytes_per_token, **kwargs)


def _factory(optim: dict[str, Any], key: str) -> Any:
    """``optim.<key>`` instantiated (a partial); it is called only once training starts, so an
    argument its target does not take is refused here, by name, not with a traceback then."""
    factory = hydra.utils.instantiate(optim[key])
    unknown = unknown_arguments(factory, f"optim.{key}")
    if unknown:
        raise ConfigError("; ".join(unknown))
    return factory


def build_loggers(
    config: dict[str, Any],
    run_dir: Path,
    dm: pl.LightningDataModule,
    val_metrics: Sequence[str],
    history: HistoryLogger,
) -> list[Logger]:
    """metrics.csv always; plus W&B when ``logger`` names it (``logger=wandb``), which
    summarises each of ``val_metrics`` by its best and last value."""
    spec = config["logger"]
    if not spec:
        return [history]
    import wandb  # only where W&B is used: importing it takes a second

    mixer, task = mixer_label(config["mixer"]), config["task"]["name"]
    wandb_logger = hydra.utils.instantiate(
        spec,
        name=f"{mixer}-{task}-seed{config['seed']}",
        save_dir=str(run_dir),
        id=_previous_results(run_dir).get("wandb_run_id"),  # a resumed run continues its W&B run
        tags=[mixer, task, *spec["tags"]],
        mode=wandb_mode(spec["mode"]),
        # W&B's own banner and end-of-run history: the run's summary names the W&B paths
        settings=wandb.Settings(silent=True),
    )
    # Lightning passes anonymous=None, which W&B warns about on every run ("The anonymous
    # setting has no effect"); not passing it changes nothing else.
    wandb_logger._wandb_init.pop("anonymous", None)
    # the run's config as W&B's, here rather than through instantiate, which would build the
    # objects its _target_ nodes name
    wandb_logger.log_hyperparams(
        {**config, "mixer_label": mixer_label(config["mixer"]), "data_fingerprint": dm.fingerprint}
    )
    run = wandb_logger.experiment
    for metric in val_metrics:
        summary = f"{mode_of(metric)},last"
        run.define_metric(metric, step_metric="trainer/global_step", summary=summary)
    return [history, wandb_logger]


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
    """The configured checkpoint and ``extra`` callbacks, and the ones every run needs."""
    settings = config["callbacks"]
    checkpoint = hydra.utils.instantiate(
        settings["checkpoint"],  # what a run's results and resuming rely on is set here
        dirpath=str(run_dir / CHECKPOINT_DIR),
        filename="best",
        mode=mode_of(settings["checkpoint"]["monitor"]),
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    callbacks = [
        checkpoint,
        CheckpointOnInterrupt(run_dir / CHECKPOINT_DIR),
        ThroughputMonitor(),
        StopOnDivergence(),
        ResumeState(),
    ]
    if settings["progress_bar"]:
        callbacks.append(ProgressBar())
    callbacks.extend(hydra.utils.instantiate(spec) for spec in settings["extra"])
    return callbacks


def _previous_results(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RESULTS_FILE
    return json.loads(path.read_text()) if path.exists() else {}
