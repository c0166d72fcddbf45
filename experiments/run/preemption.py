"""A preempted or timed-out job of a Hydra submitit sweep (``launcher=slurm``,
``launcher=submitit_local``) saves its run and is requeued into the same run folder.

submitit tells a job it is about to lose its node with a signal (USR2 by default) and handles it
by pickling the job and requeueing it (``scontrol requeue`` on SLURM; the local executor re-runs
it). Handled as submitit does it, training would stop wherever the signal lands, with nothing
saved. :class:`RequeueOnPreemption` puts the run's own SIGTERM path first: the signal becomes a
SIGTERM to this process, so Lightning stops after the current batch and ``last.ckpt`` is saved
(the promise of a SIGTERM: save, then exit 143); once the run's record says ``interrupted``,
:meth:`RequeueOnPreemption.requeue` hands over to submitit's own handler, which requeues the
job. The requeued job runs the same Hydra job, into the same folder, so it resumes from
``last.ckpt`` and the same W&B run. Lightning's SLURM auto-requeue (which calls ``scontrol``
itself, on SIGUSR1) stays off (:func:`lightning_plugins`).

Outside a submitit job nothing changes. submitit's handler is found by the name of the method
submitit binds to the signal, the one thing here that reads submitit's internals.
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Any

from pytorch_lightning.plugins.environments import SLURMEnvironment

# The bound method submitit's job process installs for its preemption signal.
SUBMITIT_HANDLER = "checkpoint_and_try_requeue"
SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)  # the ones submitit may use (SUBMITIT_PREEMPT_SIGNAL)


def submitit_handler() -> tuple[signal.Signals, Any] | None:
    """The signal submitit listens to in this process and its handler; None outside a job."""
    for signum in SIGNALS:
        handler = signal.getsignal(signum)
        if getattr(handler, "__name__", None) == SUBMITIT_HANDLER:
            return signum, handler
    return None


class RequeueOnPreemption:
    """In a submitit job, turns the preemption signal into the run's SIGTERM path and keeps
    submitit's handler for :meth:`requeue` (the module docstring). Made in the job's main
    thread, before training: signal handlers can only be set there."""

    def __init__(self) -> None:
        self.found = submitit_handler()
        self.requested = False
        if self.found is not None:
            signal.signal(self.found[0], self._preempted)

    def _preempted(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning stops after this batch and we save

    def requeue(self) -> None:
        """Hand over to submitit: it pickles the job and requeues it, then exits."""
        if self.found is None or not self.requested:
            raise RuntimeError("requeue() is for a submitit job that was sent its signal")
        signum, handler = self.found
        handler(signum, None)


def lightning_plugins() -> list[Any]:
    """Under SLURM, Lightning's environment with its own auto-requeue off: submitit requeues."""
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
