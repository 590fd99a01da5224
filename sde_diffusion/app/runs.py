"""Whole runs from a config: a new run to train (:func:`build_experiment`), a finished run to
reload from its directory alone (:func:`load_run`: config, SDE, data and score model), and a
cascade's second stage, the super-resolution run its config names (:func:`load_cascade_stage`).

:func:`load_run` is what ``sde-sample`` and ``sde-eval`` load a run with, and the way to write
one's own sampling or likelihood script against a run of ``sde-train``; a fine-tuning run
(``init_from``) starts from one. Both belong to the config layer: they build the objects of one
config section each with :mod:`sde_diffusion.config`, which imports nothing from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .._checks import check_range
from ..conditioning import SuperResolution
from ..data.dataset import Dataset
from ..models.lora import merge_lora
from ..sdes.base import SDE
from ..training import load_checkpoint
from ..training.options import TrainOptions
from ..training.posthoc_ema import SNAPSHOT_DIR, Reconstruction, ema_weights, load_snapshots, reconstruct
from .config import (
    ConfigError,
    _build,
    build_conditioner,
    build_dataset,
    build_loss,
    build_lr_schedule,
    build_optimizer,
    build_sampler,
    build_score_model,
    build_sde,
    build_train_options,
    one_line,
    resolve_device,
)


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
    reconstruction: Reconstruction | None = None  # with weights=posthoc: how the weights were made (width, fit error)

    def super_resolve(
        self, low: torch.Tensor, *, batch_size: int, seed: int, progress: bool = False, score=None, sampler: tuple | None = None
    ):
        """``low`` ``(N, C, h, w)`` super-resolved by this super-resolution run: by ``score`` (default:
        its model) with ``sampler``, a ``(sampler, grid)`` pair (default: its own config's); returns
        the drawn samples (:class:`~sde_diffusion.samplers.DrawnSamples`)."""
        from ..samplers.draw import super_resolve

        if self.conditioner is None:
            raise ConfigError(f"{self.run_dir} is not a super-resolution run (no conditioning); train one with experiment=digits_sr")
        step, grid = sampler if sampler is not None else build_sampler(self.config)
        return super_resolve(
            self.sde,
            self.score_model if score is None else score,
            step,
            grid,
            self.conditioner,
            low,
            batch_size=batch_size,
            seed=seed,
            device=self.device,
            progress=progress,
        )


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


WEIGHTS = ("ema", "raw", "posthoc")
"""Which weights of a run :func:`load_run` loads: the EMA of the weights (what ``sde-train``
evaluates), the raw weights of the last step, or a post-hoc EMA of any width reconstructed from the
snapshots of a ``train.ema=posthoc`` run (:mod:`~sde_diffusion.training.posthoc_ema`)."""


def load_run(
    run_dir: str | Path, device: str | torch.device = "auto", *, weights: str = "ema", sigma_rel: float | None = None
) -> TrainedRun:
    """Load the run ``sde-train`` wrote in ``run_dir``: ``.hydra/config.yaml`` (a relative
    ``data.path`` is taken from where ``sde-train`` was launched) and ``checkpoints/last.pt``
    (verified, loaded without running code); a LoRA fine-tuning run's adapters are merged into the
    weights (:func:`~sde_diffusion.models.lora.merge_lora`). ``device``: ``auto`` (CUDA when present), ``cpu``,
    ``cuda``, ``cuda:<index>`` or a ``torch.device``. ``weights``: ``ema`` (the exponential moving
    average, the default), ``raw`` (the weights of the last step: better than a lagging EMA in
    short runs, see ``sde-train``'s warnings) or ``posthoc`` (the post-hoc EMA of relative width
    ``sigma_rel``, reconstructed from the run's ``checkpoints/ema_snapshots``; ``sde-ema`` sweeps it).

    Raises :class:`~sde_diffusion.config.ConfigError` for a directory without a saved config and
    :class:`~sde_diffusion.training.CheckpointError` for a missing or damaged checkpoint.
    """
    if weights not in WEIGHTS:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if (weights == "posthoc") != (sigma_rel is not None):
        raise ConfigError(
            "weights=posthoc reconstructs the average of width sigma_rel: give both (weights=posthoc sigma_rel=0.07)"
            if weights == "posthoc"
            else f"sigma_rel={sigma_rel} chooses a post-hoc EMA: add weights=posthoc"
        )
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
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt", map_location=dev)
    reconstruction = None if sigma_rel is None else posthoc_weights(run_dir, sigma_rel)  # weights=posthoc
    if weights == "ema":
        weights_state = ema_weights(state["ema"])
    else:
        weights_state = state["model"] if reconstruction is None else reconstruction.state
    model = _model_with(cfg, sde, data, weights_state, dev)
    return TrainedRun(run_dir, cfg, sde, data, model, int(state["step"]), dev, build_conditioner(cfg), reconstruction)


def _model_with(cfg: DictConfig, sde: SDE, data: Dataset, state: dict, device: torch.device) -> nn.Module:
    """The run's model built from ``cfg`` with the weights ``state`` (a ``state_dict``), on ``device``, for evaluation."""
    model = build_model(cfg, sde, data)
    model.load_state_dict(state)
    merge_lora(model)  # a LoRA fine-tuning run samples at the base model's cost, with the same outputs (to round-off)
    return model.to(device).eval()


def posthoc_weights(run_dir: Path, sigma_rel: float) -> Reconstruction:
    """The post-hoc EMA of relative width ``sigma_rel`` of the run in ``run_dir``, reconstructed from
    its snapshots (on the CPU); a ConfigError for a width out of range."""
    return _reconstruction(_snapshots(run_dir), sigma_rel)


def posthoc_models(trained: TrainedRun, widths: Sequence[float]) -> Iterator[tuple[Reconstruction, nn.Module]]:
    """``load_run(weights="posthoc", sigma_rel=w)``'s reconstruction and model for each of ``widths`` of the
    run ``trained`` (``sde-ema``'s sweep), reading its snapshots once and building only the model anew."""
    snapshots = _snapshots(trained.run_dir)
    for width in widths:
        reconstruction = _reconstruction(snapshots, width)
        yield reconstruction, _model_with(trained.config, trained.sde, trained.data, reconstruction.state, trained.device)


def _snapshots(run_dir: Path) -> list[dict]:
    try:
        return load_snapshots(run_dir / "checkpoints" / SNAPSHOT_DIR)
    except ValueError as err:
        raise ConfigError(one_line(err)) from None


def _reconstruction(snapshots: list[dict], sigma_rel: float) -> Reconstruction:
    """:func:`~sde_diffusion.training.posthoc_ema.reconstruct`, a ConfigError for a width out of range."""
    try:
        return reconstruct(snapshots, sigma_rel)
    except ValueError as err:
        raise ConfigError(one_line(err)) from None


def load_cascade_stage(cfg: DictConfig, device: torch.device, low_shape: tuple[int, ...]) -> TrainedRun | None:
    """A cascade's second stage (``experiment=digits_cascade``): the super-resolution run in
    ``cascade.sr_dir`` that takes the base model's images of ``low_shape`` ``(C, h, w)``; None for a
    config without a ``cascade`` section. Refuses a cascade without ``sr_dir``, a run without image
    conditioning and one for another image size, each in one line."""
    cascade = OmegaConf.select(cfg, "cascade", default=None)
    if cascade is None:
        return None
    if OmegaConf.is_missing(cascade, "sr_dir") or cascade.get("sr_dir") is None:
        raise ConfigError(
            "experiment=digits_cascade needs its second stage: cascade.sr_dir=<a finished sde-train experiment=digits_sr run>"
        )
    path = Path(str(cascade.sr_dir)).expanduser()
    if not path.is_dir():
        raise ConfigError(f"cascade.sr_dir={path} is not a directory; pass the directory of a finished sde-train experiment=digits_sr run")
    sr = load_run(path, device)
    if sr.conditioner is None:
        raise ConfigError(f"cascade.sr_dir={path} is not a super-resolution run (no conditioning); train one with experiment=digits_sr")
    expected = sr.conditioner.output_shape(tuple(low_shape))
    if tuple(sr.data.data_shape) != expected:
        raise ConfigError(
            f"cascade.sr_dir={path} turns {tuple(low_shape)} images into {tuple(sr.data.data_shape)} only if they are 1/{sr.conditioner.factor} "
            f"of its size, but the base model draws {tuple(low_shape)} images (it would make {expected}); train the two stages on one image size"
        )
    return sr


def build_model(cfg: DictConfig, sde: SDE, data: Dataset) -> nn.Module:
    """The run's score model: built from ``model`` (:func:`build_score_model`), or, with ``init_from``,
    the EMA model of that finished run made ready by ``finetune`` (default ``full``) for the data's
    classes (:mod:`sde_diffusion.finetune`). The run's SDE must be the initial run's."""
    return build_model_and_finetune(cfg, sde, data)[0]


def build_model_and_finetune(cfg: DictConfig, sde: SDE, data: Dataset) -> tuple[nn.Module, Any]:
    """:func:`build_model` and the fine-tuning mode it applied (None without ``init_from``)."""
    init_from = OmegaConf.select(cfg, "init_from", default=None)
    if init_from is None:
        if OmegaConf.select(cfg, "finetune", default=None) is not None:
            raise ConfigError("finetune=... adapts a finished run: give init_from=<its run directory> too")
        return build_score_model(cfg, sde, data.data_shape, data.n_classes, data.train), None
    from ..finetune import FullFinetune

    init = load_run(init_from, "cpu")
    if repr(init.sde) != repr(sde):
        raise ConfigError(f"init_from={init_from} was trained with {init.sde!r}, but this run's sde is {sde!r}: choose the same sde")
    if tuple(init.data.data_shape) != tuple(data.data_shape):
        raise ConfigError(
            f"init_from={init_from} models data of shape {init.data.data_shape}, but data {data.name!r} has {data.data_shape}"
        )
    finetune = _build(cfg, "finetune") if OmegaConf.select(cfg, "finetune", default=None) is not None else FullFinetune()
    model = init.score_model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        finetune.apply(model, data.n_classes)
    except ValueError as err:
        raise ConfigError(f"finetune: {one_line(err)}") from None
    return model, finetune


@dataclass
class Experiment:
    """Everything a training run needs, built and validated from one config."""

    device: torch.device
    sde: SDE
    data: Dataset
    score_model: nn.Module
    loss_fn: Callable
    options: TrainOptions
    optimizer: Callable
    lr_schedule: Callable | None
    sampler: Callable
    grid: Callable
    conditioner: SuperResolution | None = None  # the image conditioning of a super-resolution run (SuperResolution), else None
    finetune: Any = None  # a fine-tuning run's mode (sde_diffusion.finetune), else None


def _try_once(loss_fn: Callable, score_model: nn.Module, sde: SDE, data: Dataset, conditioner=None) -> None:
    """Evaluate the loss on two training points, so that a loss, model and SDE that do not fit
    together (``loss=ddpm_simple`` on a VP SDE, ``loss=ddpm_hybrid`` without a learned-variance
    model) fail here in one line, before the run starts (:func:`build_sampler` tries the grid). The network runs
    in eval mode (no dropout draws: the global random stream stays as it was)."""
    training = score_model.training
    score_model.eval()
    labels = data.train_labels[:2] if data.train_labels is not None and getattr(score_model, "n_classes", None) is not None else None
    model = score_model if labels is None else (lambda x, t, **kw: score_model(x, t, labels, **kw))  # as the Trainer calls it
    if conditioner is not None:
        try:
            cond = conditioner.training(data.train[:2], torch.Generator().manual_seed(0))
        except ValueError as err:
            raise ConfigError(f"conditioning: {one_line(err)}") from None
        model = lambda x, t, **kw: score_model(x, t, labels, cond=cond, **kw)  # noqa: E731 (as the Trainer calls it)
    try:
        with torch.no_grad():
            loss_fn(model, sde, data.train[:2], generator=torch.Generator().manual_seed(0))
    except ValueError as err:
        raise ConfigError(f"loss: {one_line(err)}") from None
    finally:
        score_model.train(training)


def _check_loss_fits_model(loss_fn, score_model) -> None:
    """Refuse the flow-matching loss on a network that does not predict the velocity: the pair trains
    (the loss is DSM with lambda = g^4 / 4) but badly, since the weighting is flat only for the
    velocity (rectified flow, 2,000 steps on the checkerboard: sliced W2 0.70 with noise prediction,
    the raw weights' held-out loss 2.3x the EMA's; 0.14 with model=mlp_velocity)."""
    from ..losses import plain_loss
    from ..losses.weighting import FlowMatchingWeighting
    from ..models import VelocityParameterization

    weighting = getattr(plain_loss(loss_fn), "keywords", {}).get("weighting")
    if isinstance(weighting, FlowMatchingWeighting) and not isinstance(score_model, VelocityParameterization):
        raise ConfigError(
            f"loss=flow_matching trains a network that predicts the velocity, but model.parameterization is "
            f"{type(score_model).__name__}: add model=mlp_velocity (or model.parameterization._target_=sde_diffusion.VelocityParameterization)"
        )


def build_experiment(cfg: DictConfig) -> Experiment:
    """Validate and build the whole run; fails fast with a :class:`ConfigError`, before any training."""
    try:
        seed = check_range("seed", cfg.get("seed", 0), low=0, integer=True)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    device = resolve_device(cfg.get("device", "auto"))
    sde = build_sde(cfg)
    options = build_train_options(cfg)
    optimizer, lr_schedule = build_optimizer(cfg), build_lr_schedule(cfg)
    sampler, grid = build_sampler(cfg, sde)  # its grid tried on the SDE
    data = build_dataset(cfg)
    loss_fn = build_loss(cfg, data)
    conditioner = build_conditioner(cfg)
    torch.manual_seed(seed)  # the network's initial weights (and a fine-tuning run's adapters) follow the run's seed
    score_model, finetune = build_model_and_finetune(cfg, sde, data)
    _check_loss_fits_model(loss_fn, score_model)
    _try_once(loss_fn, score_model, sde, data, conditioner)
    return Experiment(device, sde, data, score_model, loss_fn, options, optimizer, lr_schedule, sampler, grid, conditioner, finetune)
