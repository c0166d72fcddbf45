"""The training pieces of a mixerlab run, on PyTorch Lightning.

``modules`` (the LightningModules and their optimisation), ``callbacks/`` (every callback of a
run), ``loggers`` (metrics.csv), ``checkpoints`` (checkpoint I/O), ``record`` (the run folder's
files and ``results.json``, free of torch and Lightning), ``metric_names`` (which way a metric
improves) and ``tasks/`` (the registered tasks).
"""
