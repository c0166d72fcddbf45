"""Hydra configs shipped with mixerlab, and the resolvers they compute with: registered here, as
Hydra imports this package before it reads a config from it (``mixerlab train`` and
``initialize_config_module("mixerlab.conf")`` alike)."""

from omegaconf import OmegaConf

from mixerlab.lightning_modules.metric_names import mode_of

# conf/experiment/zoology_grid.yaml: MQAR's key-value pairs grow with the (swept) sequence length.
OmegaConf.register_new_resolver("mixerlab.floordiv", lambda a, b: int(a) // int(b), replace=True)
# conf/sweep/optuna.yaml: the study's direction follows the monitored metric, as checkpointing does.
OmegaConf.register_new_resolver(
    "mixerlab.direction",
    lambda metric: {"max": "maximize", "min": "minimize"}[mode_of(metric)],
    replace=True,
)
