"""The one place mixerlab reads ``datasets``' private state: a dataset's fingerprint.

``datasets`` identifies every dataset by a fingerprint (a hash of its source files and of the
transforms applied since) and keeps it in ``Dataset._fingerprint``; it offers no public way to
read it. The text task identifies a Hugging Face corpus by it (its cache key), so it is read
here and nowhere else, and the behaviour relied on (``from_generator(fingerprint=...)`` sets it,
the same saved dataset loads with the same fingerprint, a transform changes it) is tested
against the installed version. Checked on datasets :data:`CHECKED_ON`.
"""

from __future__ import annotations

import datasets

CHECKED_ON = "5.2.0"


def dataset_fingerprint(dataset: datasets.Dataset) -> str:
    """The fingerprint ``datasets`` keeps for ``dataset``."""
    return dataset._fingerprint
