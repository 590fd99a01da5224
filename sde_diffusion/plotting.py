"""Moved to :mod:`sde_diffusion.app.plotting` (the configuration layer); importing ``sde_diffusion.plotting``
gives that module itself, so scripts written against the old path keep working."""

import sys

from .app import plotting

sys.modules[__name__] = plotting
