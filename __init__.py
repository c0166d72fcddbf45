"""mixerlab: compare token mixers under identical conditions.

This file is the ``mixerlab`` package itself. ``pyproject.toml`` maps the repository root to the
import name ``mixerlab`` (setuptools' ``package-dir``), so the design card's folders install as
``mixerlab.mixers``, ``mixerlab.lightning_modules``, ``mixerlab.experiments`` and
``mixerlab.conf``, and ``mixerlab`` is the one top-level name a ``pip install`` adds. It sits at
the root, not in a folder of its own, so that it and its subpackages are one directory tree: run
from the repository root, no stray ``mixerlab/`` folder can shadow the installed package.

The names a plugin author needs, from one place::

    from mixerlab import TokenMixer, register_mixer, check_mixer

Each is imported on first use (PEP 562), so ``import mixerlab`` costs nothing: ``mixerlab
compare`` never loads torch, and only ``register_task`` loads Lightning.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

# public name -> the package that exports it (importing a package registers its built-ins)
_PUBLIC = {
    "TokenMixer": "mixerlab.mixers",
    "register_mixer": "mixerlab.mixers",
    "build_mixer": "mixerlab.mixers",
    "available_mixers": "mixerlab.mixers",
    "SequenceModel": "mixerlab.mixers",
    "check_mixer": "mixerlab.mixers.testing",
    "register_task": "mixerlab.lightning_modules.tasks",
    "register_plot": "mixerlab.experiments.compare.plots",
}

__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:
    from mixerlab.experiments.compare.plots import register_plot as register_plot
    from mixerlab.lightning_modules.tasks import register_task as register_task
    from mixerlab.mixers import SequenceModel as SequenceModel
    from mixerlab.mixers import TokenMixer as TokenMixer
    from mixerlab.mixers import available_mixers as available_mixers
    from mixerlab.mixers import build_mixer as build_mixer
    from mixerlab.mixers import register_mixer as register_mixer
    from mixerlab.mixers.testing import check_mixer as check_mixer


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'mixerlab' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


def import_public_modules(package: str, path: Iterable[str]) -> None:
    """Import every module of ``package`` whose name has no leading underscore, so that the
    registrations they hold run (private modules are helpers): the one discovery of the
    extension points' built-ins (mixers, tasks, plots). It lives here, beside no heavy import,
    because ``mixerlab compare`` discovers its plots without loading torch."""
    for module in pkgutil.iter_modules(path):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package}.{module.name}")
