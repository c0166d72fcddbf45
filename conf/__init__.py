"""Hydra configs shipped with mixerlab."""
