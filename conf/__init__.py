"""Hydra configs shipped with mixerlab, and the resolvers they compute with: registered here, as
Hydra imports this package before it reads a config from it (``mixerlab train`` and
``initialize_config_module("mixerlab.conf")`` alike)."""

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
