"""Every callback of a mixerlab run, one module per concern: throughput accounting, the progress
bar, the divergence stop, resuming (the checkpoint at an interrupt, random and gradient state)
and ``results.json`` over the run's life."""

from mixerlab.lightning_modules.callbacks.divergence import Diverged, StopOnDivergence
from mixerlab.lightning_modules.callbacks.progress import ProgressBar
from mixerlab.lightning_modules.callbacks.resume import (
    CheckpointOnInterrupt,
    ResumeState,
    StopTogether,
)
from mixerlab.lightning_modules.callbacks.run_record import RunRecord, chance_levels
from mixerlab.lightning_modules.callbacks.throughput import (
    TRAINING_FLOPS_PER_FORWARD,
    ThroughputMonitor,
)

__all__ = [
    "TRAINING_FLOPS_PER_FORWARD",
    "CheckpointOnInterrupt",
    "Diverged",
    "ProgressBar",
    "ResumeState",
    "RunRecord",
    "StopOnDivergence",
    "StopTogether",
    "ThroughputMonitor",
    "chance_levels",
]
