"""Build library objects from a composed Hydra config: the only library module that reads configs.

Each YAML group names the class or function to build with ``_target_``; this module instantiates
them, checks what came out, and turns every failure into a :class:`ConfigError` whose message is one
line naming the config key and the fix. The entry points in :mod:`sde_diffusion.cli` print it.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import re
from collections.abc import Callable
from typing import cast

import torch
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from ..data.dataset import Dataset
from ..likelihood.estimators import NLLBound
from ..losses import LearnedUncertainty
from ..models import (
    DataParameterization,
    EDMPreconditioning,
    EpsilonParameterization,
    LearnedVarianceParameterization,
    estimate_sigma_data,
)
from ..samplers.driver import on_driver
from ..samplers.thresholding import thresholding
from ..sdes.base import SDE
from ..training.options import TrainOptions
from . import schemas  # noqa: F401  (registers the typed config schemas with Hydra's ConfigStore)


class ConfigError(ValueError):
    """A config value is invalid; the message is one line naming the key and the fix."""


def one_line(err: BaseException) -> str:
    """The most specific message in an exception chain, on one line (with the target that could
    not be imported, when that is the problem)."""
    located = re.match(r"Error locating target '([^']+)'", str(err))
    while err.__cause__ is not None:
        err = err.__cause__
    text = (" ".join(str(err).split()) or type(err).__name__).split(" full_key:")[0]
    if located:
        return f"cannot import _target_ '{located[1]}' ({text}); check the name and that its module is on PYTHONPATH"
    return text


def _build(cfg: DictConfig, key: str, **kwargs):
    """Instantiate ``cfg[key]``, turning any failure into a one-line :class:`ConfigError`."""
    try:
        node = OmegaConf.select(cfg, key, throw_on_missing=True)
        if node is None:
            raise ConfigError(f"config has no '{key}' section; add it or choose a {key}=<option>")
        return instantiate(node, **kwargs)
    except ConfigError:
        raise
    except OmegaConfBaseException as err:
        raise ConfigError(f"{key}: {one_line(err)} (set it on the command line, e.g. {key}.<name>=<value>)") from None
    except (HydraException, ValueError, TypeError, ImportError, AttributeError) as err:
        raise ConfigError(f"{key}: {one_line(err)}") from None


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cuda`` without a GPU is an error."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: unknown device {name!r}; use auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA GPU is available to torch; use device=cpu or device=auto")
    return device


CUSTOM_SDE = "sde=custom sde._target_=your_module.YourPath"
"""How to train with one's own SDE class (``conf/sde/custom.yaml``): no other group's keys reach it."""


def build_sde(cfg: DictConfig) -> SDE:
    """``sde``; ``sde=custom`` without its ``_target_``, and a ``sde._target_`` given over another
    group's keys (``beta_min`` of the default ``sde=vp``), are refused with the command that works."""
    node = OmegaConf.select(cfg, "sde")
    if isinstance(node, DictConfig) and OmegaConf.is_missing(node, "_target_"):
        raise ConfigError(f"sde=custom needs your SDE class: {CUSTOM_SDE}, plus its constructor's arguments as +sde.<key>=<value>")
    try:
        sde = _build(cfg, "sde")
    except ConfigError as err:
        raise ConfigError(f"{err}{_foreign_sde_key_hint(node, str(err))}") from None
    if not isinstance(sde, SDE):
        raise ConfigError(f"sde: {type(sde).__name__} is not a subclass of sde_diffusion.SDE")
    return sde


def _foreign_sde_key_hint(node, message: str) -> str:
    """The fix for ``sde._target_=my.Class`` over a group's keys: the constructor refused a key
    (``unexpected keyword argument 'beta_min'``) that the ``sde`` section holds, i.e. one the chosen
    group (default ``vp``) put there and overriding ``_target_`` alone did not remove."""
    key = re.search(r"unexpected keyword argument '(\w+)'", message)
    if not isinstance(node, DictConfig) or key is None or key[1] not in node:
        return ""
    target = node.get("_target_")
    return (
        f"; sde.{key[1]} is a key of the sde group chosen (sde=vp by default), which setting sde._target_ keeps: "
        f"use sde=custom sde._target_={target} (its own arguments as +sde.<key>=<value>)"
    )


def build_dataset(cfg: DictConfig) -> Dataset:
    data = _build(cfg, "data")
    if not isinstance(data, Dataset):
        raise ConfigError(f"data: the target returned {type(data).__name__}, not a sde_diffusion Dataset")
    return data


PRECONDITIONINGS = ("none", "edm")
"""``model.preconditioning``: ``none`` (the network as ``model.parameterization`` says) or ``edm``."""


def build_score_model(
    cfg: DictConfig, sde: SDE, data_shape: tuple[int, ...], n_classes: int | None = None, train_data: torch.Tensor | None = None
) -> nn.Module:
    """The raw network from ``model.net`` wrapped by ``model.parameterization`` into ``score(x, t)``,
    or with ``model.preconditioning=edm`` by :class:`~sde_diffusion.models.EDMPreconditioning` at
    ``model.sigma_data`` (``auto``: :func:`~sde_diffusion.models.estimate_sigma_data` of
    ``train_data``; a loaded checkpoint then restores the value it was trained with).
    ``model.net.n_classes=auto`` takes the data's number of classes ``n_classes``."""
    extra = {}
    if OmegaConf.select(cfg, "model.net.n_classes", default=None) == "auto":
        if n_classes is None:
            raise ConfigError(
                "model.net.n_classes=auto takes the data's number of classes, but the data have no labels; use labelled data (data=digits)"
            )
        extra["n_classes"] = int(n_classes)
    net = _build(cfg, "model.net", data_shape=list(data_shape), **extra)
    wrap = _build(cfg, "model.parameterization")
    if _preconditioning(cfg) == "edm":
        wrap = _edm_preconditioning(cfg, wrap, train_data)
    try:
        return wrap(net=net, sde=sde)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model.parameterization: {one_line(err)}") from None


def _preconditioning(cfg: DictConfig) -> str:
    """``model.preconditioning`` (``none`` for configs saved before it existed); ``model.sigma_data``
    given as a number without ``edm`` is refused, since nothing would use it."""
    kind = str(OmegaConf.select(cfg, "model.preconditioning", default="none"))
    if kind not in PRECONDITIONINGS:
        raise ConfigError(f"model.preconditioning must be one of {', '.join(PRECONDITIONINGS)}, got {kind!r}")
    sigma_data = OmegaConf.select(cfg, "model.sigma_data", default="auto")
    if kind == "none" and sigma_data != "auto":
        raise ConfigError(
            f"model.sigma_data={sigma_data} scales EDM's preconditioning, which model.preconditioning=none does not use: "
            "add model.preconditioning=edm, or leave model.sigma_data=auto"
        )
    return kind


_REPLACED_BY_PRECONDITIONING = (EpsilonParameterization, DataParameterization, LearnedVarianceParameterization, EDMPreconditioning)
"""The parameterizations ``model.preconditioning=edm`` replaces: those predicting the noise or the data."""


def _edm_preconditioning(cfg: DictConfig, wrap: Callable, train_data: torch.Tensor | None) -> Callable:
    """``EDMPreconditioning`` in place of ``model.parameterization``, which must predict the noise
    or the data (the denoiser replaces either; a learned variance stays) or be EDM's own."""
    replaced = getattr(wrap, "func", wrap)
    if not (isinstance(replaced, type) and issubclass(replaced, _REPLACED_BY_PRECONDITIONING)):
        name = getattr(replaced, "__name__", type(replaced).__name__)
        raise ConfigError(
            f"model.preconditioning=edm makes the network a denoiser, in place of model.parameterization's {name}, which predicts something "
            "else: use a noise-predicting model (model=mlp, unet, mlp_learned_variance) or model.preconditioning=none"
        )
    if OmegaConf.select(cfg, "model.parameterization.sigma_data", default=None) is not None:
        raise ConfigError("model.parameterization.sigma_data and model.sigma_data: give it once, as model.sigma_data")
    learn_variance = bool(getattr(replaced, "learns_variance", False))
    sigma_data = _sigma_data("model.sigma_data", OmegaConf.select(cfg, "model.sigma_data", default="auto"), train_data)
    return functools.partial(EDMPreconditioning, sigma_data=sigma_data, learn_variance=learn_variance)


def _sigma_data(key: str, sigma_data, train_data: torch.Tensor | None) -> float:
    """``sigma_data`` given at ``key``: a positive number, or for ``auto``
    :func:`~sde_diffusion.models.estimate_sigma_data` of ``train_data``."""
    if sigma_data == "auto":
        if train_data is None:
            raise ConfigError(f"{key}=auto is estimated from the training data, which were not given; set {key}=<number>")
        return estimate_sigma_data(train_data)
    if isinstance(sigma_data, bool) or not isinstance(sigma_data, (int, float)) or not sigma_data > 0:
        raise ConfigError(f"{key} must be auto or a positive number (the data's standard deviation), got {sigma_data!r}")
    return float(sigma_data)


LOSS_OPTIONS = ("weighting", "proposal")
"""The loss keys with a nested group (``conf/loss/weighting/``, ``conf/loss/proposal/``): a name given
as the key's value (``loss.weighting=min_snr``) is that option with its defaults, as
``loss/weighting=min_snr`` is (which also takes ``loss.weighting.gamma=3``)."""


def build_loss(cfg: DictConfig, data: Dataset | None = None) -> Callable:
    """``loss``; ``loss.levels=auto`` (an autoencoder's decoder) takes the data's number of levels;
    ``loss.weighting`` and ``loss.proposal`` may name an option (:data:`LOSS_OPTIONS`); a weighting's
    ``sigma_data: auto`` (``loss=edm``) is the model's: ``model.sigma_data`` with
    ``model.preconditioning=edm``, else the training data's standard deviation, the value
    ``model.sigma_data=auto`` gives a new model (a fine-tuned model keeps the value it was trained with).
    ``loss.learned_weighting=true`` wraps the loss in :class:`~sde_diffusion.losses.LearnedUncertainty`
    (EDM2's learned ``u(sigma)``); a loss that is not denoising score matching refuses it in one line."""
    given: dict = {}
    for key in LOSS_OPTIONS:
        name = OmegaConf.select(cfg, f"loss.{key}", default=None)
        if isinstance(name, str):
            given[key] = _loss_option(key, name)
    weighting = given.get("weighting", OmegaConf.select(cfg, "loss.weighting", default=None))
    if isinstance(weighting, DictConfig) and weighting.get("sigma_data") == "auto":
        key = "model.sigma_data" if OmegaConf.select(cfg, "model.preconditioning", default="none") == "edm" else "loss.weighting.sigma_data"
        sigma_data = _sigma_data(key, OmegaConf.select(cfg, key, default="auto"), None if data is None else data.train)
        given["weighting"] = OmegaConf.merge(weighting, {"sigma_data": sigma_data})
    if OmegaConf.select(cfg, "loss.levels", default=None) == "auto":
        given["levels"] = None if data is None else data.levels
    learned = OmegaConf.select(cfg, "loss.learned_weighting", default=None)
    if learned is not None:  # a key of this layer, not an argument of the loss
        if not isinstance(learned, bool):
            raise ConfigError(f"loss.learned_weighting must be true or false, got {learned!r}")
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg.loss):
            del cfg.loss["learned_weighting"]
    loss_fn = _build(cfg, "loss", **given)
    if not learned:
        return loss_fn
    try:
        return LearnedUncertainty(loss_fn)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"loss.learned_weighting=true: {one_line(err)}") from None


def _loss_option(key: str, name: str) -> DictConfig:
    """The shipped option ``conf/loss/<key>/<name>.yaml``, or a ConfigError listing them."""
    folder = importlib.resources.files("sde_diffusion.conf") / "loss" / key
    options = sorted(entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml"))
    if name not in options:
        raise ConfigError(f"loss.{key}={name} is not an option; choose one of {', '.join(options)} (conf/loss/{key}/)")
    return cast(DictConfig, OmegaConf.create((folder / f"{name}.yaml").read_text()))


def build_train_options(cfg: DictConfig) -> TrainOptions:
    return _build(cfg, "train")


def build_optimizer(cfg: DictConfig) -> Callable:
    """``optimizer(parameters)`` from the ``optim`` group (a partial ``torch.optim`` class); Adam at
    ``train.lr`` for configs that have none (runs saved before the group existed). Tried once on a
    throwaway parameter, so a bad option fails here in one line, not inside the Trainer."""
    if OmegaConf.select(cfg, "optim") is None:
        return functools.partial(torch.optim.Adam, lr=float(cfg.train.lr), foreach=True)
    make = _build(cfg, "optim")
    try:
        make([nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as err:
        raise ConfigError(f"optim: {one_line(err)}") from None
    return make


def build_lr_schedule(cfg: DictConfig) -> Callable | None:
    """``lr_schedule(optimizer)`` from the ``lr_schedule`` group; None (the Trainer's default warm-up)
    for configs that have none. Tried once on a throwaway optimizer, like :func:`build_optimizer`."""
    if OmegaConf.select(cfg, "lr_schedule") is None:
        return None
    make = _build(cfg, "lr_schedule")
    try:
        make(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"lr_schedule: {one_line(err)}") from None
    return make


def build_sampler(cfg: DictConfig, sde: SDE | None = None) -> tuple[Callable, Callable]:
    """``(sampler, grid_fn)``: call ``sampler(sde, score_fn, x_T, ts, generator=...)`` on the grid
    ``ts = grid_fn(sde, dtype=..., device=...)``.

    ``sampler.fn`` builds a :class:`~sde_diffusion.samplers.Step` (the shipped configs; a user's own
    step subclass as well), which is a sampler run on the driver; a partial function (``ode``,
    ``torchsde``, and the sampler functions that runs saved before the configs named steps target,
    such as ``dpm_solver_pp``) is taken as it is. ``sampler.n_steps``, when set, replaces the grid's
    ``n_steps``.

    ``sampler.denoise_to_zero`` and ``sampler.thresholding`` (with ``threshold_percentile`` and
    ``data_range``, in the model's units) become the driver's ``denoise_to_zero`` and
    ``x0_correction``; a sampler not on the driver (ode, torchsde) refuses them in one line.

    A key that the step does not take (``+sampler.fn.churn=1`` on ``ddim``) is refused here in one
    line with the fix, not as a TypeError mid-run; given the run's ``sde``, the grid is built on it
    once, so that keys it does not take (``eps`` after ``sampler.grid._target_=...discrete_time_grid``)
    and arguments it refuses (too many steps of a chain, a grid the SDE has no times for) fail here too.
    """
    if OmegaConf.select(cfg, "sampler") is not None and OmegaConf.is_missing(cfg.sampler, "fn"):
        raise ConfigError("sampler=run takes the sampler of a trained run, which only sde-sample has: choose a sampler=<name>")
    try:
        sampler = _build(cfg, "sampler.fn")
    except ConfigError as err:
        _refuse_unknown_key(cfg, "sampler.fn", err)
        raise
    grid = _build(cfg, "sampler.grid")
    n_steps = OmegaConf.select(cfg, "sampler.n_steps", default=None)
    if n_steps is not None:
        grid = functools.partial(grid, n_steps=int(n_steps))
    if sde is not None:
        try:
            grid(sde, dtype=torch.float64)
        except (ValueError, TypeError) as err:
            _refuse_unknown_key(cfg, "sampler.grid", err)
            raise ConfigError(f"sampler.grid: {one_line(err)}") from None
    options: dict = {}
    if OmegaConf.select(cfg, "sampler.denoise_to_zero", default=False):
        options["denoise_to_zero"] = True
    kind = OmegaConf.select(cfg, "sampler.thresholding", default="none")
    try:
        correction = thresholding(
            kind,
            percentile=OmegaConf.select(cfg, "sampler.threshold_percentile", default=0.995),
            data_range=tuple(OmegaConf.select(cfg, "sampler.data_range", default=[-1.0, 1.0])),
        )
    except ValueError as err:
        raise ConfigError(f"sampler.thresholding: {one_line(err)}") from None
    if correction is not None:
        options["x0_correction"] = correction
    if options and not on_driver(sampler):
        keys = " and ".join({"denoise_to_zero": "sampler.denoise_to_zero", "x0_correction": "sampler.thresholding"}[k] for k in options)
        target = OmegaConf.select(cfg, "sampler.fn._target_")
        raise ConfigError(f"{keys} need a fixed-grid sampler (ddim, dpm_solver, unipc, ipndm, heun, pc, ...); {target} is not one")
    return (functools.partial(sampler, **options) if options else sampler), grid


def _refuse_unknown_key(cfg: DictConfig, key: str, err: Exception) -> None:
    """When ``err`` is a constructor's or function's refusal of a keyword (``DDIMStep.__init__() got
    an unexpected keyword argument 'churn'``), raise it as one line naming the key and the fix."""
    refused = re.search(r"([\w.]+)\(\) got an unexpected keyword argument '(\w+)'", str(err))
    if refused is None:
        return
    name, arg = refused[1].removesuffix(".__init__"), refused[2]
    if key == "sampler.grid" and arg == "n_steps" and OmegaConf.select(cfg, "sampler.n_steps", default=None) is not None:
        raise ConfigError(
            f"sampler.n_steps: the grid {name} takes no n_steps; remove sampler.n_steps or choose a sampler/grid=<name>"
        ) from None
    fix = f"remove it with '~{key}.{arg}'"
    option = _grid_option(str(OmegaConf.select(cfg, "sampler.grid._target_"))) if key == "sampler.grid" else None
    if option:  # likely sampler.grid._target_ set over another grid's keys
        fix = f"choose the grid as sampler/grid={option}, which brings its own keys only, instead of by sampler.grid._target_; or {fix}"
    raise ConfigError(f"{key}: {name}() takes no {arg}; {fix}") from None


def _grid_option(target: str) -> str | None:
    """The shipped ``sampler/grid`` option (``conf/sampler/grid/``) that builds ``target``, if any."""
    folder = importlib.resources.files("sde_diffusion.conf") / "sampler" / "grid"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        option = OmegaConf.create(entry.read_text())
        if isinstance(option, DictConfig) and option.get("_target_") == target:
            return entry.name.removesuffix(".yaml")
    return None


_TASK_OF_LOSS = {"classifier_loss": "classifier", "AutoencoderLoss": "autoencoder", "RestorationLoss": "cold", "restoration_loss": "cold"}
"""The losses that make a run another task than a score model's, by their class or function name."""


def task_name(cfg: DictConfig) -> str:
    """The kind of run a config trains, a key of :data:`sde_diffusion.tasks.TASKS`: ``classifier``,
    ``autoencoder`` or ``cold`` by its loss (``task=classifier``, ``task=autoencoder``,
    ``experiment=digits_cold``), ``super_resolution`` by its ``conditioning``, else ``score``. Saved
    configs of earlier runs name their task the same way."""
    target = str(OmegaConf.select(cfg, "loss._target_", default="") or "")
    by_loss = _TASK_OF_LOSS.get(target.rsplit(".", 1)[-1])
    if by_loss is not None:
        return by_loss
    return "super_resolution" if OmegaConf.select(cfg, "conditioning", default=None) is not None else "score"


def build_conditioner(cfg: DictConfig):
    """``conditioning`` (a super-resolution run's :class:`~sde_diffusion.conditioning.SuperResolution`),
    or None when the config has none; the network must then take a conditioning image."""
    if OmegaConf.select(cfg, "conditioning", default=None) is None:
        if OmegaConf.select(cfg, "model.net.cond_channels", default=0):
            raise ConfigError(
                "model.net.cond_channels is set but the config has no conditioning; use experiment=digits_sr or set cond_channels=0"
            )
        return None
    conditioner = _build(cfg, "conditioning")
    if not callable(getattr(conditioner, "training", None)) or not callable(getattr(conditioner, "sampling", None)):
        raise ConfigError(
            f"conditioning: {type(conditioner).__name__} has no training/sampling methods (use sde_diffusion.SuperResolution)"
        )
    if not OmegaConf.select(cfg, "model.net.cond_channels", default=0):
        raise ConfigError(
            "conditioning is set but the network takes no conditioning image; set model.net.cond_channels to the images' channels"
        )
    return conditioner


def build_bound(cfg: DictConfig) -> NLLBound:
    """``bound``, what ``sde-eval`` computes (``conf/bound/``: an
    :class:`~sde_diffusion.likelihood.estimators.NLLBound` by ``_target_``), its options checked."""
    bound = _build(cfg, "bound")
    if not isinstance(bound, NLLBound):
        raise ConfigError(f"bound: {type(bound).__name__} is not an NLLBound (e.g. sde_diffusion.likelihood.ODELikelihood)")
    return bound
