"""Hydra configs shipped with mixerlab, and the resolvers they compute with: registered here, as
Hydra imports this package before it reads a config from it (``mixerlab train`` and
``initialize_config_module("mixerlab.conf")`` alike)."""

import os

from omegaconf import OmegaConf

from mixerlab.experiments.run.study import job_dir_of, runs_dir_of
from mixerlab.lightning_modules.metric_names import mode_of

# conf/experiment/zoology_grid.yaml: MQAR's key-value pairs grow with the (swept) sequence length.
OmegaConf.register_new_resolver("mixerlab.floordiv", lambda a, b: int(a) // int(b), replace=True)
# conf/sweep/optuna.yaml: the study's direction follows the monitored metric, as checkpointing does.
OmegaConf.register_new_resolver(
    "mixerlab.direction",
    lambda metric: {"max": "maximize", "min": "minimize"}[mode_of(metric)],
    replace=True,
)
# conf/hydra/default.yaml: with study=<name>, runs go to studies/<name>/runs/<job name> (a name
# made of the job's own overrides, the same on every machine); without, to the default folders.
OmegaConf.register_new_resolver("mixerlab.study_runs", runs_dir_of, replace=True)
OmegaConf.register_new_resolver(
    "mixerlab.study_job",
    lambda study, overrides, default: job_dir_of(study, list(overrides), default),
    replace=True,
)
# conf/hydra/default.yaml: only the first process of a multi-process run (DDP, SLURM tasks) writes
# the run's log file; the others' lines still reach stderr. Lightning's DDP starts the others with
# LOCAL_RANK set, srun with SLURM_PROCID, torchrun with RANK.
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK")


def rank_zero_path(path: str) -> str:
    """``path`` in the first process, the null device in every other."""
    rank = next((os.environ[name] for name in RANK_VARIABLES if name in os.environ), "0")
    return path if rank == "0" else os.devnull


OmegaConf.register_new_resolver("mixerlab.rank_zero_path", rank_zero_path, replace=True)
