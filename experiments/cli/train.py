"""``mixerlab train``: the Hydra app that trains one model per composed config.

    mixerlab train                                  # the main job: byte-level LM, default mixer
    mixerlab train mixer=gmlp task=mqar             # swap config groups
    mixerlab train -m mixer=attention,rnn,conv      # one run per mixer (Hydra multirun)
    mixerlab train resume=runs/2025-01-01/12-00-00-000000_attention_text   # continue a run

``python -m mixerlab.experiments.cli.train`` is the same app (W&B sweep agents run it). Every run
gets its own directory (``runs/<date>/<time with microseconds>_<mixer>_<task>``) with what the run
writes (``mixerlab.experiments.run.train``), ``train.log`` (the run's log) and Hydra's ``.hydra/``
(the composed config and the overrides). A config error leaves no folder.

``resume=<run dir>`` trains a run folder again with the run's own overrides (from
``.hydra/overrides.yaml``) plus any given after it, e.g. ``resume=<dir> trainer.max_steps=2000``
to train longer; the run continues from its newest checkpoint that loads.

``study=<name>`` trains into a study (``mixerlab.experiments.run.study``): the runs go to
``studies/<name>/runs/<job name>`` and the command is recorded in ``studies/<name>/study.yaml``
(taken out again when the launch exits 2: it trained nothing).

Exit status: 0 done, 1 the run (or a job of a sweep) failed, 2 a bad command line, config or
checkpoint (one message, no traceback), 3 the run diverged, 130 Ctrl-C, 143 SIGTERM (after
saving ``last.ckpt``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import CodeType

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, OverrideParseException, SearchPathException
from hydra.types import RunMode
from omegaconf import DictConfig

from mixerlab.experiments.cli._hydra_adapter import run_app
from mixerlab.experiments.cli._sweep_summary import report_started_sweeps
from mixerlab.experiments.cli._train_argv import (
    check_flags,
    check_overrides,
    expand_resume,
    split_hydra_argv,
    study_launch,
)
from mixerlab.experiments.cli._train_errors import composition_error_message, report_config_error
from mixerlab.experiments.run.run_folder import holds_only_hydra_files, remove_run_dir
from mixerlab.experiments.run.schema import ConfigError
from mixerlab.experiments.run.study import (
    STUDY_FILE,
    Command,
    StudyError,
    forget_command,
    read_study,
    record_command,
    study_dir,
)
from mixerlab.experiments.run.train import train
from mixerlab.lightning_modules.callbacks import Diverged

COMMAND = "train"
HELP = "train a model (a Hydra app: overrides, -m, --cfg job, --help, --info)"

# What Hydra raises when the command line or the config files cannot be composed.
COMPOSITION_ERRORS = (ConfigCompositionException, OverrideParseException, SearchPathException)
# Exit codes beyond 0, 1 (failed), 2 (bad input) and the run's own 143 after SIGTERM: what
# clusters expect after Ctrl-C (128 + 2), and a run that diverged.
INTERRUPT_EXIT, DIVERGED_EXIT = 130, 3
# The loggers conf/hydra/default.yaml configures: the root and Lightning's (which it makes pass
# their records on to the root's handlers).
HYDRA_CONFIGURED_LOGGERS = ("", "pytorch_lightning", "lightning_fabric")


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
        launch = study_launch(argv)
        argv = expand_resume(argv)
        check_overrides(split_hydra_argv(argv)[1])
        check_flags(argv)
    except ConfigError as err:
        report_config_error(err)
        return 2
    try:
        recorded = record_study_command(launch)
    except StudyError as err:  # a study.yaml that cannot be read
        report_config_error(ConfigError(str(err)))
        return 2
    code = _run(argv)
    if code == 2 and recorded:  # a bad command line or config trained nothing: not the study's
        forget_command(*launch)
    return code


def record_study_command(launch: tuple[str, Command] | None) -> bool:
    """Record a study's command in its study.yaml (the first launch writes it; a new command is
    appended) and say so; returns whether study.yaml changed."""
    if launch is None:
        return False
    name, command = launch
    how = record_command(name, command)
    path = study_dir(name) / STUDY_FILE
    if how == "created":
        print(f"mixerlab: study {name}: new, its command recorded in {path}", file=sys.stderr)
    elif how == "appended":
        commands = len(read_study(name).commands)
        print(
            f"mixerlab: study {name}: a new command, appended to {path} ({commands} commands)",
            file=sys.stderr,
        )
    return how != "known"


def _run(argv: list[str]) -> int:
    """Hydra's app on ``argv``, its outcome as an exit status (see :func:`main`)."""
    try:
        with hydra_raising_errors(), logging_restored():
            run_app(_hydra_app, argv, script=__file__)
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
        print_traceback_from(err, _hydra_app.__wrapped__.__code__)
        return 1
    finally:
        report_started_sweeps()
    return 0


@contextlib.contextmanager
def hydra_raising_errors() -> Iterator[None]:
    """Hydra raises its errors instead of printing them (its documented switch,
    ``HYDRA_FULL_ERROR=1``), so that ``mixerlab train`` reports them: one message for a bad
    command line, a traceback only for a failed run."""
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["HYDRA_FULL_ERROR"]
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved


@contextlib.contextmanager
def logging_restored() -> Iterator[None]:
    """The handlers of the loggers Hydra configures as they were before: Hydra's point at the
    run's terminal streams and train.log, which a later run in the process must not write to."""
    loggers = [logging.getLogger(name) for name in HYDRA_CONFIGURED_LOGGERS]
    saved = [(logger.handlers[:], logger.propagate) for logger in loggers]
    try:
        yield
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved, strict=True):
            for handler in set(logger.handlers) - set(handlers):
                handler.close()
            logger.handlers[:] = handlers
            logger.propagate = propagate


def print_traceback_from(err: BaseException, task_function: CodeType) -> None:
    """The stack trace of a failed run from the task function on, without Hydra's frames (as
    Hydra prints it); the whole trace when the error did not come from the task function."""
    tb = err.__traceback__
    while tb is not None and tb.tb_frame.f_code is not task_function:
        tb = tb.tb_next
    traceback.print_exception(type(err), err, tb or err.__traceback__)


if __name__ == "__main__":
    raise SystemExit(main())
