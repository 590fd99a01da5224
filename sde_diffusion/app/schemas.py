"""Typed schemas of the apps' configs (Hydra structured configs), so that a value of the wrong type
or a key that does not exist fails when the config is composed, before anything runs.

Each primary config (``conf/config.yaml``, ``sample.yaml``, ``eval.yaml``, ``ema.yaml``) names its schema first in
its defaults list; the YAML files give the values and their comments. The SDE, model, data, loss,
sampler, optimizer and schedule groups stay free-form: they name any class by ``_target_``, whose
own constructor checks its arguments (``sde._target_=my_module.MySDE`` with options of its own);
``model`` has two keys of its own besides its network and wrapper, ``preconditioning`` and ``sigma_data``.
Registered with Hydra's ``ConfigStore`` when this module is imported, which both
``sde_diffusion.conf`` (Hydra loading the packaged configs) and :mod:`sde_diffusion.config` (anyone
building objects from a config, also from a copy of ``conf/`` on disk) do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from ..training.options import TrainOptions


@dataclass
class TrainConfig(TrainOptions):
    """``train``: the fields, types and defaults of :class:`~sde_diffusion.training.TrainOptions`."""

    _target_: str = "sde_diffusion.training.TrainOptions"


@dataclass
class ModelConfig:
    """``model``: the raw network and the wrapper that makes it a score (``_target_``, free-form), and
    EDM's preconditioning, which any model of noise or data prediction can take
    (:func:`~sde_diffusion.config.build_score_model`)."""

    net: Any = MISSING
    parameterization: Any = MISSING
    preconditioning: str = "none"  # none (model.parameterization as given) or edm (EDMPreconditioning in its place)
    sigma_data: Any = "auto"  # with edm: the data's standard deviation, a number or auto (estimated from the training data)


@dataclass
class SamplerConfig:
    """``sampler``: the sampler (a :class:`~sde_diffusion.samplers.Step`, or a solver's function)
    and time grid to build (``_target_``, free-form), and the options of the fixed-grid driver that
    every sampler on it shares (:func:`~sde_diffusion.samplers.sample_on_grid`,
    :mod:`~sde_diffusion.samplers.thresholding`)."""

    fn: Any = MISSING
    grid: Any = MISSING
    n_steps: int | None = None  # when set, replaces the grid's n_steps (sampler.n_steps=50)
    denoise_to_zero: bool = False
    thresholding: str = "none"
    threshold_percentile: float = 0.995
    data_range: list[float] = field(default_factory=lambda: [-1.0, 1.0])


@dataclass
class AppConfig:
    """The keys every app has: where and how fast it runs, and its seed."""

    seed: int = MISSING
    device: str = MISSING  # auto, cpu, cuda, cuda:<index>
    threads: Any = MISSING  # a positive integer or "auto"
    progress: bool = MISSING
    precision: str = MISSING  # fp32, bf16 or fp16
    compile: bool = MISSING


@dataclass
class TrainAppConfig(AppConfig):
    """``sde-train``'s top level (``conf/config.yaml``)."""

    sde: Any = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    data: Any = MISSING
    loss: Any = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: Any = MISSING
    lr_schedule: Any = MISSING
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    degradation: Any = None  # cold diffusion's D(x, t) (experiment=digits_cold), free-form by _target_
    cold: Any = None  # cold diffusion's sampling settings: steps, noise, t_starts
    conditioning: Any = None  # image conditioning (experiment=digits_sr): SuperResolution by _target_
    cascade: Any = None  # experiment=digits_cascade: sr_dir, the super-resolution run that follows this base model
    finetune: Any = None  # with init_from: what trains (LoRAFinetune, EmbeddingFinetune, FullFinetune by _target_)
    init_from: Any = None  # a finished run to fine-tune
    autoencoder_dir: Any = None  # experiment=latent_digits: the task=autoencoder run whose latents the model learns
    n_samples: int = MISSING
    guidance: float = MISSING
    eval_points: int = MISSING


@dataclass
class SampleAppConfig(AppConfig):
    """``sde-sample``'s top level (``conf/sample.yaml``)."""

    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    run_dir: str = MISSING
    n_samples: int = MISSING
    batch_size: int = MISSING
    task: str = MISSING
    mask: str = MISSING
    t0: float = MISSING
    class_label: int | None = MISSING
    guidance: float = MISSING
    classifier_dir: str | None = MISSING
    classifier_scale: float = MISSING
    low_res: str | None = MISSING
    weights: str = MISSING
    sigma_rel: float | None = MISSING  # weights=posthoc: the post-hoc EMA's relative width


@dataclass
class EvalAppConfig(AppConfig):
    """``sde-eval``'s top level (``conf/eval.yaml``)."""

    run_dir: str = MISSING
    split: str = MISSING
    n_points: int | None = MISSING
    batch_size: int = MISSING
    divergence: str = MISSING
    n_probes: int = MISSING
    n_dequant: int = MISSING
    rtol: float = MISSING
    atol: float = MISSING
    method: str = MISSING
    eps: float = MISSING
    backend: str = MISSING
    bound: Any = MISSING  # the bound to compute (conf/bound/), free-form by _target_
    variance: str = MISSING
    n_terms: int | None = MISSING
    n_time_samples: int = MISSING
    elbo_eps: Any = MISSING  # a time or "auto"
    time_variable: str = MISSING
    weights: str = MISSING
    sigma_rel: float | None = MISSING  # weights=posthoc: the post-hoc EMA's relative width


@dataclass
class EmaAppConfig:
    """``sde-ema``'s top level (``conf/ema.yaml``)."""

    run_dir: str = MISSING
    sigma_rel: Any = MISSING  # a width or a list of widths
    n_points: int | None = MISSING
    seed: int = MISSING
    device: str = MISSING
    threads: Any = MISSING


SCHEMAS = {"train_schema": TrainAppConfig, "sample_schema": SampleAppConfig, "eval_schema": EvalAppConfig, "ema_schema": EmaAppConfig}


def register() -> None:
    """Store the schemas under the names the primary configs' defaults lists use."""
    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(name=name, node=node)


register()
