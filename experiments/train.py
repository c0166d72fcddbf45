"""``mixerlab train``: the Hydra app that trains one model per composed config.

    mixerlab train                                  # the main job: byte-level LM, default mixer
    mixerlab train mixer=gmlp task=mqar             # swap config groups
    mixerlab train -m mixer=attention,rnn,conv      # one run per mixer (Hydra multirun)
    mixerlab train resume=runs/2025-01-01/12-00-00-000000_attention_text   # continue a run

Every run gets its own directory (``runs/<date>/<time with microseconds>_<mixer>_<task>``) with
``results.json``, ``metrics.csv``, ``train.log`` (the run's log), ``checkpoints/``
(``last.ckpt`` and ``best.ckpt``), the W&B run under ``wandb/`` and Hydra's ``.hydra/`` (the
composed config and the overrides). A config error leaves no folder.

Resuming: a run directory that holds ``checkpoints/last.ckpt`` continues from it when trained
again. ``resume=<run dir>`` does that with the run's own overrides (from ``.hydra/overrides.yaml``)
plus any given after it, e.g. ``resume=<dir> trainer.max_steps=2000`` to train longer;
``ckpt_path=<file.ckpt>`` starts from any checkpoint in a new run directory instead.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    ConfigCompositionException,
    InstantiationException,
    OverrideParseException,
    SearchPathException,
)
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from experiments.build import (
    CHECKPOINT_DIR,
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_model,
    build_module,
    check_monitor,
)
from experiments.mixer_config import mixer_label
from experiments.schema import ConfigError, validate_config
from experiments.sweep_summary import report_started_sweeps
from experiments.train_cli import (
    composition_error_message,
    holds_only_hydra_files,
    hydra_raising_errors,
    logging_restored,
    print_traceback_from,
    remove_run_dir,
    report_config_error,
)
from lightning_modules.callbacks import ThroughputMonitor
from lightning_modules.metric_names import mode_of
from lightning_modules.results import HistoryLogger, RunResults, chance_levels
from mixers import SequenceModel

log = logging.getLogger(__name__)  # Hydra sends it to the terminal and <run dir>/train.log
# Noise from Lightning on newer torch releases, printed once per process; nothing to act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
# Lightning's advertisements for its cloud products, printed by every run.
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda record: not record.getMessage().startswith("💡 Tip:")
)
# What Hydra raises when the command line or the config files cannot be composed.
COMPOSITION_ERRORS = (ConfigCompositionException, OverrideParseException, SearchPathException)
# What building the run from a valid-looking config raises for a value only the built object
# can judge (a DataModule argument, a `_target_`, a Trainer setting): config errors too.
BUILD_ERRORS = (ValueError, TypeError, InstantiationException, MisconfigurationException)
# conf/sweep/optuna.yaml: the study's direction follows the monitored metric, as checkpointing does.
OmegaConf.register_new_resolver(
    "mixerlab.direction",
    lambda metric: {"max": "maximize", "min": "minimize"}[mode_of(metric)],
    replace=True,
)


# ----------------------------------------------------------------------------------- training
def train(
    cfg: DictConfig | dict[str, Any], run_dir: str | Path, callbacks: Sequence[pl.Callback] = ()
) -> float | None:
    """Train one run into ``run_dir``; returns the best value of the monitored metric.

    The config is validated first (ConfigError, before any work). ``run_dir/results.json`` is
    written whatever happens next: ``finished``, ``failed`` (then the error is re-raised) or
    ``interrupted`` (then KeyboardInterrupt is re-raised). A ``run_dir`` holding
    ``checkpoints/last.ckpt`` resumes from it. ``callbacks`` are added to the config's.
    """
    config = validate_config(cfg)
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    history = HistoryLogger(run_dir)
    pl.seed_everything(config["seed"], workers=True)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")

    model: SequenceModel | None = None
    trainer: pl.Trainer | None = None
    monitor: ThroughputMonitor | None = None
    status, error, config_error = "failed", None, False
    try:
        try:
            dm = build_datamodule(config)
            model = build_model(config, dm)
            module = build_module(config, model, dm)
            val_metrics = module.val_metric_names()
            check_monitor(config["callbacks"]["checkpoint"]["monitor"], val_metrics)
            all_callbacks = [*build_callbacks(config, run_dir), *callbacks]
            monitor = next(cb for cb in all_callbacks if isinstance(cb, ThroughputMonitor))
            trainer = pl.Trainer(
                **config["trainer"],
                check_val_every_n_epoch=None,  # validate every val_check_interval steps
                gradient_clip_val=config["optim"]["grad_clip"],
                default_root_dir=run_dir,
                logger=build_loggers(config, run_dir, dm, val_metrics, history),
                callbacks=all_callbacks,
                enable_progress_bar=config["callbacks"]["progress_bar"],
                enable_model_summary=False,  # its FLOPs column reads 0: see the line below
            )
        except BUILD_ERRORS as err:
            raise ConfigError(f"building the run from the config failed: {err}") from err
        if rank_zero_only.rank == 0:
            log.info(_describe(config, model, run_dir))
        last = run_dir / CHECKPOINT_DIR / "last.ckpt"
        ckpt_path = config["ckpt_path"] or (str(last) if last.exists() else None)
        if ckpt_path:
            log.info("mixerlab: resuming from %s", ckpt_path)
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
        if trainer.global_step % config["trainer"]["val_check_interval"]:
            trainer.validate(module, datamodule=dm, verbose=False)  # final metrics are final
        status = "finished"
    except SystemExit as exit_:
        # Lightning turns Ctrl-C into on_exception callbacks + sys.exit(1); anything else exiting
        # is a failure like any other.
        if trainer is not None and trainer.interrupted:
            status = "interrupted"
            raise KeyboardInterrupt from None
        error = f"SystemExit: exit status {exit_.code}"
        raise
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except BaseException as err:
        error, config_error = f"{type(err).__name__}: {err}", isinstance(err, ConfigError)
        raise
    finally:
        results = _results(config, run_dir, status, error, model, trainer, monitor, history)
        # A config error is the caller's to report: the summary would only say it twice.
        _finish(results, run_dir, summary=not config_error)
    return results.best.get(config["callbacks"]["checkpoint"]["monitor"])


def _flops_per_token(model: SequenceModel) -> float:
    with contextlib.suppress(NotImplementedError):  # a plugin mixer without its FLOP count
        return model.flops_per_token(model.max_len)
    return math.nan


def _describe(config: dict[str, Any], model: SequenceModel, run_dir: Path) -> str:
    """The run in one line, where Lightning's model summary would stand."""
    flops = _flops_per_token(model)
    counted = "not counted by the mixer" if math.isnan(flops) else f"{flops:,.0f}"
    return (
        f"mixerlab: {mixer_label(config['mixer'])} on {config['task']['name']}, "
        f"{model.num_params():,} params, forward FLOPs per token at length {model.max_len}: "
        f"{counted}; {config['trainer']['max_steps']:,} steps into {run_dir}"
    )


def _results(
    config: dict[str, Any],
    run_dir: Path,
    status: str,
    error: str | None,
    model: SequenceModel | None,
    trainer: pl.Trainer | None,
    monitor: ThroughputMonitor | None,
    history: HistoryLogger,
) -> RunResults:
    history.flush()
    ckpt_dir = run_dir / CHECKPOINT_DIR
    best_path = None
    if trainer is not None and trainer.checkpoint_callback is not None:
        best_path = trainer.checkpoint_callback.best_model_path or None
    wandb_id = None
    if trainer is not None:
        wandb_id = next((lg.version for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
    return RunResults(
        status=status,
        mixer=mixer_label(config["mixer"]),
        task=config["task"]["name"],
        seed=config["seed"],
        params=model.num_params() if model is not None else 0,
        flops_per_token=_flops_per_token(model) if model is not None else math.nan,
        metrics=history.latest(),
        best=history.best(),
        tokens_per_s=monitor.tokens_per_s if monitor is not None else math.nan,
        wall_s=round(history.wall_s(), 3),
        wandb_run_id=wandb_id,
        checkpoints={
            "last": str(ckpt_dir / "last.ckpt") if (ckpt_dir / "last.ckpt").exists() else None,
            "best": best_path,
        },
        config=config,
        error=error,
        chance=chance_levels(trainer),
    )


def _finish(results: RunResults, run_dir: Path, summary: bool) -> None:
    """results.json, the W&B summary and ``wandb.finish`` (so multirun jobs are separate runs),
    then, if ``summary``, a short summary for the terminal and train.log. Only the global rank 0
    process of a DDP run writes."""
    if rank_zero_only.rank != 0:
        return
    results.write(run_dir)
    wandb = sys.modules.get("wandb")  # only imported (by WandbLogger) when a W&B run was made
    if wandb is not None and wandb.run is not None:
        wandb.run.summary.update(
            {
                "params": results.params,
                "flops_per_token": results.flops_per_token,
                "tokens_per_s": results.tokens_per_s,
                "status": results.status,
            }
        )
        wandb.finish(exit_code=0 if results.status == "finished" else 1)
    if summary:
        log.info(_summary(results, run_dir))


def _summary(results: RunResults, run_dir: Path) -> str:
    shown = ("val/loss", "val/bpb", "val/acc", "train/loss")
    metrics = "  ".join(
        f"{k} {v:.4f}" for k, v in results.metrics.items() if k in shown and math.isfinite(v)
    )
    best = "  ".join(f"{k} {v:.4f}" for k, v in results.best.items() if k in shown)
    per_set = "  ".join(  # a task with several val sets: its pooled val/acc hides them
        f"{k.split('@', 1)[1]} {v:.4f}"
        for k, v in results.metrics.items()
        if k.startswith("val/acc@") and math.isfinite(v)
    )
    speed = ""
    if math.isfinite(results.tokens_per_s):
        speed = f" ({results.params:,} params, {results.tokens_per_s:,.0f} tokens/s)"
    lines = [
        f"mixerlab: {results.status} {results.mixer} on {results.task} in {results.wall_s:.0f} s"
        + speed,
        f"  final     {metrics or '-'}",
        *([f"  val/acc@  {per_set}"] if per_set else []),
        f"  best      {best or '-'}",
        f"  run dir   {run_dir}",
    ]
    if results.error:
        lines.append(f"  error     {results.error}")
    wandb_runs = sorted((run_dir / "wandb").glob("*run-*"))
    if wandb_runs:
        lines.append(f"  W&B       wandb leet {run_dir / 'wandb'}")
        if wandb_runs[-1].name.startswith("offline-"):
            lines.append(f"            upload: wandb sync {wandb_runs[-1]}")
    if results.status == "interrupted":
        lines.append(f"  resume    mixerlab train resume={run_dir}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ command line
@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="config")
def _hydra_app(cfg: DictConfig) -> float | None:
    """One run; returns its best monitored metric, the objective of the Optuna sweeper (None, no
    value logged, makes Optuna mark the trial failed; NaN would stop the whole study)."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    made_for_this_run = holds_only_hydra_files(run_dir, f"{hydra_cfg.job.name}.log")
    logging.captureWarnings(True)  # warnings go to train.log too
    try:
        return train(cfg, run_dir)
    except ConfigError as err:  # found as the run starts, after Hydra made its folder
        if made_for_this_run:
            remove_run_dir(run_dir)
        if hydra_cfg.mode != RunMode.MULTIRUN:
            report_config_error(err)
            raise SystemExit(2) from None
        report_config_error(err, job=f"{hydra_cfg.job.num} ({' '.join(hydra_cfg.overrides.task)})")
        raise  # Hydra marks the job failed and runs the sweep's other jobs
    finally:
        logging.captureWarnings(False)


# Hydra's command-line flags that take a value (the next argument unless given as --flag=value);
# --info/-i takes the next argument only when it is one of its topics.
HYDRA_VALUE_FLAGS = frozenset(
    {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn"}
    | {"--config-dir", "-cd", "--experimental-rerun"}
)
HYDRA_INFO_FLAGS = frozenset({"--info", "-i"})
HYDRA_INFO_TOPICS = frozenset(
    {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
)


def split_hydra_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(flags with their values, overrides) of a Hydra command line, each in the given order."""
    flags: list[str] = []
    overrides: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-"):
            overrides.append(arg)
            continue
        flags.append(arg)
        takes_value = arg in HYDRA_VALUE_FLAGS or (
            arg in HYDRA_INFO_FLAGS and i < len(args) and args[i] in HYDRA_INFO_TOPICS
        )
        if takes_value and i < len(args):
            flags.append(args[i])
            i += 1
    return flags, overrides


def expand_resume(argv: Sequence[str]) -> list[str]:
    """``resume=<run dir>`` -> that run's overrides + the given ones + ``hydra.run.dir=<dir>``.

    Flags (``--config-dir`` and the like) stay in front; a given override replaces the run's
    override of the same key.
    """
    flags, overrides = split_hydra_argv(argv)
    resume = [arg for arg in overrides if arg.startswith("resume=")]
    if not resume:
        return list(argv)
    run_dir = Path(resume[-1].split("=", 1)[1]).expanduser()
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.exists():
        raise ConfigError(
            f"resume={run_dir}: {saved} not found; pass the directory of a run started by "
            "`mixerlab train` (it holds .hydra/ and checkpoints/)"
        )
    merged: dict[str, str] = {}
    for override in [*yaml.safe_load(saved.read_text()), *overrides]:
        if not override.startswith("resume="):
            merged[override.split("=", 1)[0].lstrip("+~")] = override
    return [*flags, *merged.values(), f"hydra.run.dir={run_dir.resolve()}"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the Hydra app on ``argv``; exit 2 for config errors (one message, no traceback), 1
    when the run or any job of a sweep failed (a sweep runs all its jobs first; a job's config
    error is its failure, reported without a traceback), 130 on Ctrl-C."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = expand_resume(argv)
    except ConfigError as err:
        report_config_error(err)
        return 2
    # @hydra.main reads sys.argv; Lightning's DDP launcher re-runs `python <argv[0]> <argv[1:]>`
    # (or `python -m <module>`) for the other ranks, so argv[0] must be this runnable file.
    saved_argv, sys.argv = sys.argv, [__file__, *argv]
    try:
        with hydra_raising_errors(), logging_restored():
            _hydra_app()
    except ConfigError:  # a job of a sweep, reported by the job; the other jobs ran
        return 1
    except COMPOSITION_ERRORS as err:
        print(composition_error_message(err), file=sys.stderr)
        return 2
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    except KeyboardInterrupt:
        print("mixerlab train: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # the run, or a job of a sweep (possibly in a worker), failed
        print_traceback_from(err, _hydra_app.__wrapped__.__code__)
        return 1
    finally:
        sys.argv = saved_argv
        report_started_sweeps()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
