"""Reload a finished training run from its directory alone: config, SDE, data and score model.

:func:`load_run` is what ``sde-sample`` and ``sde-eval`` load a run with, and the way to write
one's own sampling or likelihood script against a run of ``sde-train``. It belongs to the config
layer: it reads the run's saved config and builds the objects with :mod:`sde_diffusion.config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .conditioning import SuperResolution
from .config import ConfigError, build_conditioner, build_dataset, build_model, build_sde, resolve_device
from .data.dataset import Dataset
from .models.lora import merge_lora
from .sdes.base import SDE
from .training import load_checkpoint


@dataclass
class TrainedRun:
    """A finished training run: its directory, its composed ``config``, the ``sde``, the ``data``
    (train and held-out splits), the ``score_model`` ``score(x, t)`` with the EMA weights in eval mode
    on ``device``, and the checkpoint's ``step``."""

    run_dir: Path
    config: DictConfig
    sde: SDE
    data: Dataset
    score_model: nn.Module
    step: int
    device: torch.device
    conditioner: SuperResolution | None = None  # a super-resolution run's image conditioning


RELATIVE_PATH_KEYS = ("data.path", "autoencoder_dir", "cascade.sr_dir", "init_from")
"""Config keys holding paths that, when relative, were relative to where sde-train was launched."""


def _anchor_relative_paths(cfg: DictConfig, run_dir: Path) -> None:
    """Make the relative paths of :data:`RELATIVE_PATH_KEYS` absolute, from the launch directory
    ``hydra.runtime.cwd`` of the run, so that the run loads from anywhere."""
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
    if not hydra_yaml.is_file():
        return
    launch_dir = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.cwd", default=None)
    for key in RELATIVE_PATH_KEYS:
        path = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if launch_dir and isinstance(path, str) and not Path(path).is_absolute():
            OmegaConf.update(cfg, key, str(Path(launch_dir) / path))


WEIGHTS = ("ema", "raw")
"""Which weights of a checkpoint :func:`load_run` loads: the EMA of the weights (what ``sde-train``
evaluates) or the raw weights of the last step."""


def load_run(run_dir: str | Path, device: str | torch.device = "auto", *, weights: str = "ema") -> TrainedRun:
    """Load the run ``sde-train`` wrote in ``run_dir``: ``.hydra/config.yaml`` (a relative
    ``data.path`` is taken from where ``sde-train`` was launched) and ``checkpoints/last.pt``
    (verified, loaded without running code); a LoRA fine-tuning run's adapters are merged into the
    weights (:func:`~sde_diffusion.models.lora.merge_lora`). ``device``: ``auto`` (CUDA when present), ``cpu``,
    ``cuda``, ``cuda:<index>`` or a ``torch.device``. ``weights``: ``ema`` (the exponential moving
    average, the default) or ``raw`` (the weights of the last step: better than a lagging EMA in
    short runs, see ``sde-train``'s warnings).

    Raises :class:`~sde_diffusion.config.ConfigError` for a directory without a saved config and
    :class:`~sde_diffusion.training.CheckpointError` for a missing or damaged checkpoint.
    """
    if weights not in WEIGHTS:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    run_dir = Path(run_dir).expanduser().resolve()
    cfg_path = run_dir / ".hydra" / "config.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"run_dir={run_dir} has no .hydra/config.yaml; pass the directory sde-train wrote")
    cfg = OmegaConf.load(cfg_path)
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{cfg_path} holds a list, not a run config (a mapping); pass the directory sde-train wrote")
    _anchor_relative_paths(cfg, run_dir)
    dev = resolve_device(str(device))
    sde = build_sde(cfg)
    data = build_dataset(cfg)
    model = build_model(cfg, sde, data)
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt", map_location=dev)
    if weights == "ema":  # the EMA module's state: the averaged model under "module."
        model.load_state_dict({k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")})
    else:
        model.load_state_dict(state["model"])
    merge_lora(model)  # a LoRA fine-tuning run samples at the base model's cost, with the same outputs (to round-off)
    return TrainedRun(run_dir, cfg, sde, data, model.to(dev).eval(), int(state["step"]), dev, build_conditioner(cfg))
