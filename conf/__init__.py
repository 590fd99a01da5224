"""Hydra configuration groups of sde-diffusion, shipped in the wheel as ``sde_diffusion.conf``.

Loading this package registers the typed schemas the primary configs start from
(:mod:`sde_diffusion.schemas`), so Hydra finds them wherever it composes these configs."""

from sde_diffusion import schemas as _schemas

_schemas.register()
