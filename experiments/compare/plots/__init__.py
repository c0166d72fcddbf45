"""The comparison's plots, one file each: a plot is a function registered with
:func:`register_plot` (the contract is in ``base.py``).

Importing this package imports every public module in it, so a new plot is one new file here and
no list of plots is written anywhere; helpers shared by several plots live in private modules.
"""

import importlib
import pkgutil

from mixerlab.experiments.compare.plots.base import (
    Plot,
    register_plot,
    registered_plots,
    render_plots,
)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Plot", "register_plot", "registered_plots", "render_plots"]
