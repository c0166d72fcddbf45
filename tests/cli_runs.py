"""The ``mixerlab`` command run in a subprocess, as a user's shell runs it (the end-to-end tests'
one way to start it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def mixerlab(
    env: dict[str, str], cwd: Path, *argv: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``mixerlab <argv>`` with ``env`` in ``cwd``; its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "mixerlab.experiments.cli", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
