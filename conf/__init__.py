"""Hydra configs shipped with mixerlab, and the resolver they compute with: registered here, as
Hydra imports this package before it reads a config from it."""

from omegaconf import OmegaConf

# conf/experiment/zoology_grid.yaml: MQAR's key-value pairs grow with the (swept) sequence length.
OmegaConf.register_new_resolver("mixerlab.floordiv", lambda a, b: int(a) // int(b), replace=True)
