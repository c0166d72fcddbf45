"""The comparison's plots, one file each: a plot is a function registered with
:func:`register_plot` (the contract is in ``base.py``).

Importing this package imports every public module in it, so a new plot is one new file here and
no list of plots is written anywhere; helpers shared by several plots live in private modules.
"""

from mixerlab import import_public_modules
from mixerlab.experiments.compare.plots.base import (
    Plot,
    register_plot,
    registered_plots,
    render_plots,
)

import_public_modules(__name__, __path__)

__all__ = ["Plot", "register_plot", "registered_plots", "render_plots"]
