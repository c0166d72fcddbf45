"""Reading a run's record (``results.json``) as this version of mixerlab names things.

Records written before mixerlab installed as one package name their classes by the old
top-level modules (``lightning_modules.modules.WarmupCosine``); read through here, each such
``_target_`` names the same class under ``mixerlab.``, so old run folders still compare, resume
and pass the run-identity check. Plain JSON only: ``mixerlab compare`` reads records without
loading torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The top-level packages mixerlab installed before everything moved under ``mixerlab.``.
LEGACY_PACKAGES = ("mixers", "lightning_modules", "experiments", "conf")
PACKAGE = "mixerlab"


def current_target(target: str) -> str:
    """A ``_target_`` path of a record written before the move, as it is named now."""
    if target.split(".", 1)[0] in LEGACY_PACKAGES and "." in target:
        return f"{PACKAGE}.{target}"
    return target


def upgraded(value: Any) -> Any:
    """``value`` (a decoded record or a part of it) with every ``_target_`` named as now."""
    if isinstance(value, dict):
        return {
            key: current_target(item)
            if key == "_target_" and isinstance(item, str)
            else upgraded(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [upgraded(item) for item in value]
    return value


def read_record(path: Path) -> Any:
    """The decoded JSON of a run record, its class paths named as now. Raises what reading and
    decoding raise (``OSError``, ``ValueError``, ``RecursionError``): callers say why a record
    cannot be used in their own words."""
    return upgraded(json.loads(path.read_bytes()))
