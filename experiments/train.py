"""``mixerlab train``: the Hydra app that trains one model per composed config.

    mixerlab train                                  # the main job: byte-level LM, default mixer
    mixerlab train mixer=gmlp task=mqar             # swap config groups
    mixerlab train -m mixer=attention,rnn,conv      # one run per mixer (Hydra multirun)
    mixerlab train resume=runs/2025-01-01/12-00-00-000000_attention_text   # continue a run

Every run gets its own directory (``runs/<date>/<time with microseconds>_<mixer>_<task>``) with
``results.json``, ``metrics.csv``, ``train.log`` (the run's log), ``checkpoints/``
(``last.ckpt`` and ``best.ckpt``), the W&B run under ``wandb/`` and Hydra's ``.hydra/`` (the
composed config and the overrides). A config error leaves no folder.

Resuming: a run directory that holds checkpoints continues from the newest one that loads
(``last.ckpt``; a damaged one is reported and the next newest used) when trained again.
``resume=<run dir>`` does that with the run's own overrides (from ``.hydra/overrides.yaml``)
plus any given after it, e.g. ``resume=<dir> trainer.max_steps=2000`` to train longer;
``ckpt_path=<file.ckpt or URL>`` starts from any checkpoint in a new run directory instead.
A run directory belongs to the config it was made with (``mixerlab.experiments.run_identity``):
training into it with another config (anything but ``trainer.max_steps``) is refused, unless
``overwrite=true`` discards its results and checkpoints; a run that finished with the same config is
skipped, so a re-run sweep trains only the jobs that did not finish. Checkpoints load tensors only,
files and URLs alike (``mixerlab.experiments.run_guard``).

When things go wrong: results.json says ``running`` (pid, host, last step) from the start, so a
run killed hard stays visible; a non-finite loss or gradient norm stops the run as ``diverged``
(exit 3) before any checkpoint keeps the broken weights; SIGTERM saves ``last.ckpt`` and exits
143; a bad command line, config or checkpoint is one message and exit 2.
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
from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    ConfigCompositionException,
    InstantiationException,
    OverrideParseException,
    SearchPathException,
)
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException

from mixerlab.experiments.budget import BudgetRecord, size_model
from mixerlab.experiments.build import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_model,
    build_module,
    check_monitor,
)
from mixerlab.experiments.mixer_config import mixer_label
from mixerlab.experiments.run_guard import (
    Start,
    check_budget,
    check_checkpoint_fits,
    check_model_memory,
    start_checkpoint,
)
from mixerlab.experiments.run_identity import claim_run_dir
from mixerlab.experiments.schema import ConfigError, validate_config
from mixerlab.experiments.sweep_summary import report_started_sweeps
from mixerlab.experiments.train_cli import (
    check_overrides,
    composition_error_message,
    expand_resume,
    holds_only_hydra_files,
    hydra_raising_errors,
    is_flag_error,
    logging_restored,
    print_traceback_from,
    remove_run_dir,
    report_config_error,
    split_hydra_argv,
)
from mixerlab.lightning_modules.callbacks import Diverged, SafeCheckpointIO
from mixerlab.lightning_modules.io import write_atomic
from mixerlab.lightning_modules.metric_names import mode_of
from mixerlab.lightning_modules.results import (
    RESULTS_FILE,
    HistoryLogger,
    RunRecord,
    RunResults,
    flops_per_token,
)
from mixerlab.mixers import SequenceModel

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
# What Hydra raises when the command line or the config files cannot be composed.
COMPOSITION_ERRORS = (ConfigCompositionException, OverrideParseException, SearchPathException)
# What building the run from a valid-looking config raises for a value only the built object
# can judge (a DataModule argument, a `_target_`, a Trainer setting): config errors too.
BUILD_ERRORS = (ValueError, TypeError, InstantiationException, MisconfigurationException)
# Exit codes beyond 0, 1 (failed) and 2 (bad input): what clusters expect after SIGTERM
# (128 + 15) and Ctrl-C (128 + 2), and a run that diverged.
SIGTERM_EXIT, INTERRUPT_EXIT, DIVERGED_EXIT = 143, 130, 3
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

    The config, the run folder (it holds no run or one of this config: a run that finished
    with it is not trained again, its best value is returned; ``mixerlab.experiments.run_identity``)
    and the checkpoint the run starts from (the newest readable one in ``run_dir/checkpoints/``: a
    resume, else ``ckpt_path``) are checked first (ConfigError, before any work or any write;
    ``overwrite`` empties the folder first). ``run_dir/results.json`` then says ``running`` and ends
    ``finished``, ``failed`` (the error is re-raised), ``diverged`` (:class:`Diverged` is
    re-raised), or ``interrupted`` (KeyboardInterrupt is re-raised; SystemExit(143) after SIGTERM).
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
        return _train(config, run_dir, start, callbacks)


def _train(
    config: dict[str, Any], run_dir: Path, start: Start, callbacks: Sequence[pl.Callback]
) -> float | None:
    history = HistoryLogger(run_dir)
    record = RunRecord(run_dir, history, mixer=mixer_label(config["mixer"]), config=config)
    if rank_zero_only.rank == 0:
        record.results("running").write(run_dir)  # a run is visible from its first second
    pl.seed_everything(config["seed"], workers=True, verbose=False)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")

    model: SequenceModel | None = None
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
            trainer = pl.Trainer(
                **trainer_args,
                check_val_every_n_epoch=None,  # validate every val_check_interval steps
                gradient_clip_val=config["optim"]["grad_clip"],
                default_root_dir=run_dir,
                logger=build_loggers(config, run_dir, dm, val_metrics, history),
                callbacks=[*build_callbacks(config, run_dir), record, *callbacks],
                plugins=[SafeCheckpointIO(start.preloaded())],
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
    config: dict[str, Any], model: SequenceModel, run_dir: Path, budget: BudgetRecord | None
) -> str:
    """The run in one line, where Lightning's model summary would stand."""
    flops = flops_per_token(model)
    counted = "not counted by the mixer" if math.isnan(flops) else f"{flops:,.0f}"
    sized = f" ({budget.describe()})" if budget else ""
    return (
        f"mixerlab: {mixer_label(config['mixer'])} on {config['task']['name']}, "
        f"{model.num_params():,} params{sized}, forward FLOPs per token at length {model.max_len}: "
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


# ------------------------------------------------------------------------------ command line
@hydra.main(version_base="1.3", config_path="pkg://mixerlab.conf", config_name="config")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the Hydra app on ``argv``; exit 2 for config errors (one message, no traceback), 1
    when the run or any job of a sweep failed (a sweep runs all its jobs first; a job's config
    error is its failure, reported without a traceback), 3 when it diverged (one message), 130
    on Ctrl-C, 143 on SIGTERM (after saving a checkpoint)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = expand_resume(argv)
        check_overrides(split_hydra_argv(argv)[1])
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
        return INTERRUPT_EXIT
    except Diverged as err:  # the run's summary names it too; a sweep's other jobs ran
        print(f"mixerlab train: {err}", file=sys.stderr)
        return DIVERGED_EXIT
    except Exception as err:  # the run, or a job of a sweep (possibly in a worker), failed
        if is_flag_error(err):
            print(f"mixerlab train: {err}; see `mixerlab train --help`", file=sys.stderr)
            return 2
        print_traceback_from(err, _hydra_app.__wrapped__.__code__)
        return 1
    finally:
        sys.argv = saved_argv
        report_started_sweeps()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
