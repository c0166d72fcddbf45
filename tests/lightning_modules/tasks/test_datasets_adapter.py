"""The one reach into ``datasets``' private state, checked against the installed version."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import datasets

from mixerlab.lightning_modules.tasks._datasets_adapter import CHECKED_ON, dataset_fingerprint

VERSIONS = f"datasets {metadata.version('datasets')} installed, the adapter checked on {CHECKED_ON}"


def _rows():
    yield from ({"text": word} for word in ("a", "b", "c"))


def test_the_fingerprint_is_the_one_datasets_builds_and_keeps(tmp_path: Path) -> None:
    built = datasets.Dataset.from_generator(
        _rows, fingerprint="mixerlab-test", cache_dir=str(tmp_path / "cache")
    )
    assert dataset_fingerprint(built) == "mixerlab-test", VERSIONS
    built.save_to_disk(str(tmp_path / "saved"))
    loaded = dataset_fingerprint(datasets.load_from_disk(str(tmp_path / "saved")))
    assert isinstance(loaded, str) and loaded, VERSIONS
    again = datasets.load_from_disk(str(tmp_path / "saved"))
    assert dataset_fingerprint(again) == loaded, VERSIONS  # a corpus keeps its cache key
    assert dataset_fingerprint(again.select([0, 1])) not in (loaded, "mixerlab-test"), VERSIONS
