"""Moved to :mod:`sde_diffusion.app.config` (the configuration layer); importing ``sde_diffusion.config``
gives that module itself, so scripts written against the old path keep working."""

import sys

from .app import config

sys.modules[__name__] = config
