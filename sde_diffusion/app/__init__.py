"""The configuration layer: what turns a composed Hydra config into library objects and back.

:mod:`~sde_diffusion.app.config` builds one object per config section, :mod:`~sde_diffusion.app.schemas`
types the apps' configs, :mod:`~sde_diffusion.app.runs` builds whole runs and reloads finished ones,
and :mod:`~sde_diffusion.app.plotting` draws what the apps write. Only the apps (:mod:`sde_diffusion.cli`),
the tasks (:mod:`sde_diffusion.tasks`) and :func:`sde_diffusion.load_run` import it, so
``import sde_diffusion`` loads neither Hydra, OmegaConf nor matplotlib."""
