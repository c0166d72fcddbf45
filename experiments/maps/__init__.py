"""Mixing maps of trained runs: load a run's model and an example, draw each layer's map."""
