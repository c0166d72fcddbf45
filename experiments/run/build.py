"""The parts of one run, each built from the validated config: the task's DataModule, the model
(and whether it fits the device's memory), the LightningModule, loggers and callbacks.
``mixerlab.experiments.run.train`` puts them together."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger

from mixerlab.experiments.run.budget import size_model
from mixerlab.experiments.run.config_values import unknown_arguments
from mixerlab.experiments.run.mixer_node import mixer_label
from mixerlab.experiments.run.schema import ConfigError
from mixerlab.experiments.run.wandb_mode import wandb_mode
from mixerlab.lightning_modules.callbacks import (
    CheckpointOnInterrupt,
    ProgressBar,
    ResumeState,
    StopOnDivergence,
    StopTogether,
    ThroughputMonitor,
)
from mixerlab.lightning_modules.loggers import HistoryLogger
from mixerlab.lightning_modules.metric_names import mode_of
from mixerlab.lightning_modules.modules import (
    ClassificationModule,
    LanguageModelModule,
    Seq2SeqModule,
)
from mixerlab.lightning_modules.record import CHECKPOINT_DIR, read_results
from mixerlab.lightning_modules.tasks import TaskDataModule, build_task
from mixerlab.mixers import EncoderDecoderModel, SequenceModel

log = logging.getLogger(__name__)

# bytes per parameter of the weights, by Trainer precision (anything else keeps fp32 weights)
PARAM_BYTES = {"16-true": 2, "bf16-true": 2, "64-true": 8, 64: 8}


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


def build_model(config: dict[str, Any], dm: TaskDataModule) -> SequenceModel | EncoderDecoderModel:
    """The model for this task (a SequenceModel, or an EncoderDecoderModel with
    ``model.encoder``): vocabulary, lengths, causality and head come from it, and its width from
    ``model.budget`` when one is set (:mod:`mixerlab.experiments.run.budget`)."""
    return size_model(config, dm).build()


def check_model_memory(config: dict[str, Any], dm: TaskDataModule) -> None:
    """Refuse (ConfigError) a model whose weights and gradients alone would not fit in the
    memory of the device it trains on.

    Weights and gradients are a lower bound (optimiser state and activations come on top), so
    only a run that cannot possibly fit is refused. A plugin mixer that cannot be built on the
    meta device is not checked.
    """
    try:
        with torch.device("meta"):
            params = build_model(config, dm).num_params()
    except (NotImplementedError, RuntimeError) as err:
        log.debug("mixerlab: memory not estimated, the model cannot be built on meta: %s", err)
        return
    trainer = config["trainer"]
    need = 2 * params * PARAM_BYTES.get(trainer["precision"], 4)
    have, where = _device_memory(trainer["accelerator"])
    if need > have:
        model = config["model"]
        raise ConfigError(
            f"model.d_model={model['d_model']}, model.n_layers={model['n_layers']}: the model "
            f"would have {params:,} parameters, whose weights and gradients alone need "
            f"{_size(need)} at precision {trainer['precision']}, more than the {_size(have)} of "
            f"{where}; choose a smaller model"
        )


def _device_memory(accelerator: str) -> tuple[int, str]:
    """Total memory of one training device (each device holds a whole replica) and its name."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return props.total_memory, f"the GPU ({props.name})"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"


def _size(n_bytes: float) -> str:
    """``n_bytes`` in binary units, up to EiB; beyond, in EiB with an exponent."""
    exponent = min(int(math.log(max(n_bytes, 1), 1024)), 6)
    unit = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")[exponent]
    value = n_bytes / 1024**exponent
    return f"{value:.3g} {unit}" if value < 1e4 else f"{value:.2e} {unit}"


def build_module(
    config: dict[str, Any], model: SequenceModel | EncoderDecoderModel, dm: pl.LightningDataModule
) -> pl.LightningModule:
    """The task type's LightningModule, with the optimiser and LR schedule ``optim`` names."""
    optim = config["optim"]
    kwargs = {
        "optimizer": _factory(optim, "optimizer"),
        "scheduler": _factory(optim, "scheduler"),
        "val_set_names": dm.val_set_names,
        "compile": config["compile"],
        "sequences": dm.scores_sequences,
    }
    if dm.task_type == "classification":
        return ClassificationModule(model, **kwargs)
    if dm.task_type == "seq2seq":
        return Seq2SeqModule(model, **kwargs)
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

    # W&B's own banner, end-of-run history and notes (the run's summary names the W&B paths),
    # set for the process: Lightning passes W&B an `anonymous` argument, which W&B warns about
    # while it reads its arguments, before the run's own settings apply.
    wandb.setup(settings=wandb.Settings(silent=True))
    mixer, task = mixer_label(config["mixer"]), config["task"]["name"]
    wandb_logger = hydra.utils.instantiate(
        spec,
        name=f"{mixer}-{task}-seed{config['seed']}",
        save_dir=str(run_dir),
        id=(read_results(run_dir) or {}).get("wandb_run_id"),  # a resumed run continues its W&B run
        tags=[mixer, task, *spec["tags"]],
        mode=wandb_mode(spec["mode"]),
    )
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
        StopTogether(),
        ThroughputMonitor(),
        StopOnDivergence(),
        ResumeState(),
    ]
    if settings["progress_bar"]:
        callbacks.append(ProgressBar())
    callbacks.extend(hydra.utils.instantiate(spec) for spec in settings["extra"])
    return callbacks
