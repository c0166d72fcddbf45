"""Where ``mixerlab train`` needs more of Hydra than its public API offers, in one place.

- ``@hydra.main`` reads its command line from ``sys.argv`` and takes no argument for it, so
  :func:`run_app` sets ``sys.argv`` for the call.
- Hydra refuses some flags together (``--resolve`` without ``--cfg``, ``-m`` with ``--cfg``)
  only once it runs, with a bare ``ValueError``; :func:`parse_flags` reads the command line with
  the parser ``@hydra.main`` itself uses (Hydra has no public one), so that ``mixerlab train``
  can tell those apart before Hydra runs.

Checked on hydra-core :data:`CHECKED_ON`; a test compares it with the installed version.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Callable, Sequence
from typing import Any

from hydra._internal.utils import get_args_parser

CHECKED_ON = "1.3.8"


def run_app(app: Callable[[], Any], argv: Sequence[str], script: str) -> None:
    """Call the ``@hydra.main`` function ``app`` on ``argv``. ``script`` stands in ``argv[0]``:
    Lightning's DDP launcher re-runs ``python <argv[0]> <argv[1:]>`` for the other ranks, so it
    must be a file that runs the same app. It does so only when ``__main__`` has no module spec
    (a console script); under ``python -m mixerlab.experiments.cli`` it would re-run that module
    without the ``train`` command, so the spec is hidden for the call."""
    main = sys.modules["__main__"]
    saved, sys.argv = sys.argv, [script, *argv]
    saved_spec, main.__spec__ = getattr(main, "__spec__", None), None
    try:
        app()
    finally:
        sys.argv, main.__spec__ = saved, saved_spec


def parse_flags(argv: Sequence[str]) -> argparse.Namespace | None:
    """``argv`` as ``@hydra.main`` parses it; None when its parser refuses it (or it asks for
    Hydra's version), which Hydra reports itself when it runs."""
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            return get_args_parser().parse_args(list(argv))
    except SystemExit:
        return None
