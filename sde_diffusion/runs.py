"""Moved to :mod:`sde_diffusion.app.runs` (the configuration layer); importing ``sde_diffusion.runs``
gives that module itself, so scripts written against the old path keep working."""

import sys

from .app import runs

sys.modules[__name__] = runs
