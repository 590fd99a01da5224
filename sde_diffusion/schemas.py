"""Moved to :mod:`sde_diffusion.app.schemas` (the configuration layer); importing ``sde_diffusion.schemas``
gives that module itself, so scripts written against the old path keep working."""

import sys

from .app import schemas

sys.modules[__name__] = schemas
