"""Hydra configuration groups of sde-diffusion, shipped in the wheel as ``sde_diffusion.conf``.

Loading this package registers the typed schemas the primary configs start from
(:mod:`sde_diffusion.app.schemas`), so Hydra finds them wherever it composes these configs."""

import sde_diffusion.app.schemas  # noqa: F401  (registers the schemas with Hydra's ConfigStore)
