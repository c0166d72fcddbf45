"""Atomic file writes, shared by a run's outputs and ``mixerlab compare``/``bench``.

Kept free of heavy imports (no torch, no Lightning) so that ``compare`` starts fast.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` (str as UTF-8) through a temporary file in the same folder and
    ``os.replace``, so a reader never sees half a file, even while it is rewritten or after the
    writer was killed. The temporary name holds the process id: concurrent writers never share
    one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
