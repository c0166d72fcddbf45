"""The data cache shared by the synthetic tasks (``tasks.py``) and the text data (``data.py``):
its folder and the fingerprinted HF datasets in it, so both land in one layout."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
from datasets.exceptions import DatasetGenerationError


def default_cache_dir() -> str:
    """``$MIXERLAB_CACHE`` or ``~/.cache/mixerlab``: where generated datasets are kept."""
    return os.environ.get("MIXERLAB_CACHE") or str(Path.home() / ".cache" / "mixerlab")


def cached_dataset(
    generator: Callable[..., Any], *, cache_dir: str | os.PathLike, fingerprint: str, **kwargs: Any
) -> datasets.Dataset:
    """``Dataset.from_generator`` under an explicit ``fingerprint`` in ``<cache_dir>/datasets``:
    built once, then memory-mapped. ``kwargs`` go to ``from_generator`` (features, gen_kwargs,
    split). A ValueError the generator raises (a bad-input message of ours) is re-raised as is
    rather than wrapped in the library's DatasetGenerationError."""
    try:
        return datasets.Dataset.from_generator(
            generator,
            cache_dir=str(Path(cache_dir) / "datasets"),
            fingerprint=fingerprint,
            **kwargs,
        )
    except DatasetGenerationError as err:
        if isinstance(err.__cause__, ValueError):
            raise err.__cause__ from None
        raise
