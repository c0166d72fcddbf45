"""One run: train a model for one validated config into its run folder, plain Python.

    from mixerlab.experiments.run.train import train
    best = train(config, "runs/mine")      # the best value of the monitored metric

``mixerlab train`` (``mixerlab.experiments.cli.train``) composes the config with Hydra and calls
:func:`train` once per run. The run folder holds ``results.json``, ``metrics.csv``,
``checkpoints/`` (``last.ckpt`` and ``best.ckpt``) and the W&B run under ``wandb/``.

A run folder belongs to the config it was made with (``mixerlab.experiments.run.run_folder``):
training into it with another config (anything but ``trainer.max_steps``) is refused, unless
``overwrite=true`` discards its results and checkpoints; a run that finished with the same config
is skipped, so a re-run sweep trains only the jobs that did not finish. A folder that holds
checkpoints continues from the newest one that loads (``last.ckpt``; a damaged one is reported
and the next newest used); ``ckpt_path=<file.ckpt or URL>`` starts a new folder from any
checkpoint. Checkpoints load tensors only, files and URLs alike
(``mixerlab.experiments.run.start_checkpoint``). A folder whose run left a record but no
checkpoint (a study's job on a fresh clone, a run killed before its first checkpoint) trains from
the start, its old record and ``metrics.csv`` discarded first.

When things go wrong: results.json says ``running`` (pid, host, last step) from the start, so a
run killed hard stays visible; a non-finite loss or gradient norm stops the run as ``diverged``
before any checkpoint keeps the broken weights; SIGTERM saves ``last.ckpt``; a bad config or
checkpoint is a :class:`ConfigError` raised before any work.
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import hydra
import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException

from mixerlab.experiments.run.budget import BudgetRecord, size_model
from mixerlab.experiments.run.build import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_model,
    build_module,
    check_model_memory,
    check_monitor,
)
from mixerlab.experiments.run.mixer_node import encoder_mixer_node, mixer_label
from mixerlab.experiments.run.preemption import RequeueOnPreemption, lightning_plugins
from mixerlab.experiments.run.run_folder import (
    claim_run_dir,
    restart_from_scratch,
    restore_run_files,
)
from mixerlab.experiments.run.schema import ConfigError, validate_config
from mixerlab.experiments.run.start_checkpoint import (
    Start,
    check_budget,
    check_checkpoint_fits,
    start_checkpoint,
)
from mixerlab.lightning_modules.callbacks import Diverged, RunRecord
from mixerlab.lightning_modules.callbacks.run_record import flops_per_token
from mixerlab.lightning_modules.checkpoints import SafeCheckpointIO
from mixerlab.lightning_modules.loggers import HistoryLogger
from mixerlab.lightning_modules.record import RESULTS_FILE, RunResults, write_atomic
from mixerlab.mixers import EncoderDecoderModel, SequenceModel

log = logging.getLogger(__name__)  # Hydra sends it to the terminal and <run dir>/train.log
# Noise from Lightning on newer torch releases, printed once per process; nothing to act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
# A run directory holds checkpoints only when this run resumes it (run identity sees to that).
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
# Lightning's advertisements for its cloud products, its report of accelerators nobody here has,
# and its note that max_steps was reached (the run's own summary says how it ended).
LIGHTNING_NOISE = ("💡 Tip:", "TPU available:", "HPU available:", "`Trainer.fit` stopped:")
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda record: not record.getMessage().startswith(LIGHTNING_NOISE)
)
# datasets' progress bar for every split it generates (a second or two each) would fill the log
datasets.disable_progress_bars()
# What building the run from a valid-looking config raises for a value only the built object
# can judge (a DataModule argument, a `_target_`, a Trainer setting): config errors too.
BUILD_ERRORS = (ValueError, TypeError, InstantiationException, MisconfigurationException)
# What clusters expect of a process stopped by SIGTERM (128 + 15), after it saved a checkpoint.
SIGTERM_EXIT = 143


def train(
    cfg: DictConfig | dict[str, Any], run_dir: str | Path, callbacks: Sequence[pl.Callback] = ()
) -> float | None:
    """Train one run into ``run_dir``; returns the best value of the monitored metric.

    The config, the run folder (it holds no run or one of this config: a run that finished
    with it is not trained again, its best value is returned; :mod:`.run_folder`) and the
    checkpoint the run starts from (the newest readable one in ``run_dir/checkpoints/``: a
    resume, else ``ckpt_path``) are checked first (ConfigError, before any work or any write;
    ``overwrite`` empties the folder first). ``run_dir/results.json`` then says ``running`` and ends
    ``finished``, ``failed`` (the error is re-raised), ``diverged`` (:class:`Diverged` is
    re-raised), or ``interrupted`` (KeyboardInterrupt is re-raised; SystemExit(143) after SIGTERM;
    in a submitit job sent its preemption signal, submitit requeues the job instead:
    :mod:`.preemption`).
    A config error found while building leaves an earlier results.json as it was. ``callbacks`` are
    added to the config's.
    """
    config = validate_config(cfg)
    run_dir = Path(run_dir).resolve()
    finished = claim_run_dir(cfg, run_dir)  # a folder holds one config's run
    if finished is not None:
        return (finished.get("best") or {}).get(config["callbacks"]["checkpoint"]["monitor"])
    with start_checkpoint(config, run_dir) as start:
        check_budget(start, config)
        run_dir.mkdir(parents=True, exist_ok=True)
        # no checkpoint of the folder's run to continue: its record and rows are not this run's
        stale = {} if start.continues_folder else restart_from_scratch(run_dir)
        preemption = RequeueOnPreemption()  # in a submitit job: its signal saves, then requeues
        try:
            return _train(config, run_dir, start, callbacks, stale.get(run_dir / RESULTS_FILE))
        except ConfigError:
            restore_run_files(stale)  # nothing trained: the earlier run's files stand
            raise
        except SystemExit as exit_:
            if exit_.code == SIGTERM_EXIT and preemption.requested:
                preemption.requeue()  # saved and recorded: submitit requeues the job and exits
            raise


def _train(
    config: dict[str, Any],
    run_dir: Path,
    start: Start,
    callbacks: Sequence[pl.Callback],
    discarded: bytes | None = None,
) -> float | None:
    history = HistoryLogger(run_dir)
    label = mixer_label(config["mixer"])
    record = RunRecord(run_dir, history, mixer=label, config=config, discarded=discarded)
    if rank_zero_only.rank == 0:
        record.results("running").write(run_dir)  # a run is visible from its first second
    pl.seed_everything(config["seed"], workers=True, verbose=False)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")

    model: SequenceModel | EncoderDecoderModel | None = None
    trainer: pl.Trainer | None = None
    status, error, config_error = "failed", None, False
    try:
        try:
            dm = build_datamodule(config)
            check_model_memory(config, dm)
            model = build_model(config, dm)
            budget = size_model(config, dm).budget  # how model.budget sized it (memoised)
            record.budget = budget.as_dict() if budget else None
            module = build_module(config, model, dm)
            check_checkpoint_fits(start, module)
            val_metrics = module.val_metric_names()
            check_monitor(config["callbacks"]["checkpoint"]["monitor"], val_metrics)
            # mixerlab's val_check_interval counts optimizer steps, Lightning's counts batches
            trainer_args = dict(config["trainer"])
            trainer_args["val_check_interval"] *= trainer_args["accumulate_grad_batches"]
            if isinstance(trainer_args["strategy"], dict):  # e.g. DDP with its own timeout
                trainer_args["strategy"] = hydra.utils.instantiate(trainer_args["strategy"])
            trainer = pl.Trainer(
                **trainer_args,
                check_val_every_n_epoch=None,  # validate every val_check_interval steps
                gradient_clip_val=config["optim"]["grad_clip"],
                default_root_dir=run_dir,
                logger=build_loggers(config, run_dir, dm, val_metrics, history),
                callbacks=[*build_callbacks(config, run_dir), record, *callbacks],
                plugins=[SafeCheckpointIO(start.preloaded()), *lightning_plugins()],
                enable_progress_bar=config["callbacks"]["progress_bar"],
                enable_model_summary=False,  # its FLOPs column reads 0: see the line below
            )
        except ConfigError:
            raise
        except BUILD_ERRORS as err:
            raise ConfigError(f"building the run from the config failed: {err}") from err
        if rank_zero_only.rank == 0:
            log.info(_describe(config, model, run_dir, budget))
        if start.path:
            log.info("mixerlab: resuming from %s", start.source or start.path)
        trainer.fit(module, datamodule=dm, ckpt_path=start.path)
        if trainer.global_step % config["trainer"]["val_check_interval"]:
            trainer.validate(module, datamodule=dm, verbose=False)  # final metrics are final
        status = "finished"
    except SystemExit as exit_:
        # Lightning turns Ctrl-C into on_exception callbacks + sys.exit(1), and SIGTERM into
        # SIGTERMException (a SystemExit); anything else exiting is a failure like any other.
        if trainer is not None and trainer.interrupted:
            status = "interrupted"
            if isinstance(exit_, SIGTERMException):
                raise SystemExit(SIGTERM_EXIT) from None
            raise KeyboardInterrupt from None
        error = f"SystemExit: exit status {exit_.code}"
        raise
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except Diverged as err:
        status, error = "diverged", str(err)
        raise
    except BaseException as err:
        error, config_error = f"{type(err).__name__}: {err}", isinstance(err, ConfigError)
        if trainer is not None and trainer.world_size > 1:  # which process failed, and how
            error = f"rank {trainer.global_rank} of {trainer.world_size}: {error}"
            log.error("mixerlab: %s", error)  # on every rank's stderr, rank 0's in the record
        raise
    finally:
        history.flush()
        results = record.results(status, trainer=trainer, model=model, error=error)
        # A config error is the caller's to report (the summary would only say it twice), and
        # nothing ran: an earlier record of the run stands.
        _finish(
            results,
            run_dir,
            summary=not config_error,
            keep=record.previous if config_error else None,
        )
    return results.best.get(config["callbacks"]["checkpoint"]["monitor"])


def _describe(
    config: dict[str, Any],
    model: SequenceModel | EncoderDecoderModel,
    run_dir: Path,
    budget: BudgetRecord | None,
) -> str:
    """The run in one line, where Lightning's model summary would stand."""
    flops = flops_per_token(model)
    counted = "not counted by the mixer" if math.isnan(flops) else f"{flops:,.0f}"
    sized = f" ({budget.describe()})" if budget else ""
    design, length = "", f"length {model.max_len}"
    encoder = config["model"]["encoder"]
    if encoder is not None:
        encoding = mixer_label(encoder_mixer_node(encoder, config["mixer"]))
        design = (
            f" (the decoder; encoder {encoding} x {encoder['n_layers']}, cross-mixer "
            f"{encoder['cross_mixer']})"
        )
        length = f"source length {model.max_source_len} and target length {model.max_len}"
    elif config["model"]["prefix_lm"]:
        design = " (a prefix LM: each source read both ways)"
    return (
        f"mixerlab: {mixer_label(config['mixer'])}{design} on {config['task']['name']}, "
        f"{model.num_params():,} params{sized}, forward FLOPs per token at {length}: "
        f"{counted}; {config['trainer']['max_steps']:,} steps into {run_dir}"
    )


def _finish(results: RunResults, run_dir: Path, summary: bool, keep: bytes | None) -> None:
    """results.json (or ``keep``, the earlier one, as it was), the W&B summary and
    ``wandb.finish`` (so multirun jobs are separate runs), then, if ``summary``, a short summary
    for the terminal and train.log. Only the global rank 0 process of a DDP run writes."""
    if rank_zero_only.rank != 0:
        return
    if keep is None:
        results.write(run_dir)
    else:
        write_atomic(run_dir / RESULTS_FILE, keep)
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
    if results.status == "finished" and not any(k.startswith("val/") for k in results.metrics):
        lines.append("  warning   no validation ran (trainer.limit_val_batches selects no batch)")
    return "\n".join(lines)
