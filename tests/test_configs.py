"""Every config group option composes and builds the objects it names (a config that cannot build fails here, not in a user's run)."""

from __future__ import annotations

import functools

import pytest
import torch
from apps import train_config

import sde_diffusion as sd
from sde_diffusion import samplers as S
from sde_diffusion.app.config import (
    ConfigError,
    build_dataset,
    build_loss,
    build_sampler,
    build_score_model,
    build_sde,
    build_train_options,
    resolve_device,
)
from sde_diffusion.app.runs import build_experiment
from sde_diffusion.cli._common import group_options

GROUPS = group_options()
SMALL = ["data.n_train=500", "data.n_test=100"]


def _compose(overrides):
    return train_config(*overrides)


def test_the_groups_the_issue_names_exist():
    assert {"vp", "subvp", "ve"} <= set(GROUPS["sde"])
    assert "mlp" in GROUPS["model"]
    assert set(sd.TOY_NAMES) | {"npz"} <= set(GROUPS["data"])


@pytest.mark.parametrize("option", [o for o in GROUPS["sde"] if o != "custom"])  # custom: the user's class (test_user_configs)
def test_every_sde_builds_and_has_a_kernel(option):
    sde = build_sde(_compose([f"sde={option}"]))
    assert isinstance(sde, sd.SDE) and sde.has_kernel


# image sets and the data derived from them have their own tests (test_images, test_super_resolution,
# test_latent_diffusion, test_finetune)
IMAGE_DATA = ("npz", "npz_images", "digits", "digits_low_res", "digits_few", "latents")


@pytest.mark.parametrize("option", [o for o in GROUPS["data"] if o not in IMAGE_DATA])
def test_every_toy_data_option_builds(option):
    data = build_dataset(_compose([f"data={option}", *SMALL]))
    assert data.train.shape == (500, 2) and data.test.shape == (100, 2)


@pytest.mark.parametrize("option", GROUPS["loss"])
def test_every_loss_builds_and_returns_per_sample_values(option):
    companions = {
        "ddpm_simple": ["sde=ddpm"],
        "ddpm_hybrid": ["sde=ddpm", "model=mlp_learned_variance"],
        "classifier": ["model=classifier_mlp"],
        "restoration": ["degradation=blur"],  # cold diffusion: images
        "autoencoder": ["model=autoencoder"],  # latent diffusion's autoencoder: images
        "edm": ["loss.weighting.sigma_data=0.5"],  # auto needs the training data, which build_loss is not given here
    }
    cfg = _compose([f"loss={option}", *companions.get(option, []), *SMALL])
    sde = build_sde(cfg)
    shape = (1, 8, 8) if option in ("restoration", "autoencoder") else (2,)
    model = build_score_model(cfg, sde, shape, n_classes=3)
    if option == "classifier":  # trained on labelled data: the Trainer passes each sample's label
        model = functools.partial(model, y=torch.arange(8) % 3)
    loss = build_loss(cfg)(model, sde, torch.randn(8, *shape), generator=torch.Generator().manual_seed(0))
    assert loss.shape == (8,) and torch.isfinite(loss).all()


@pytest.mark.parametrize("option", [o for o in GROUPS["sampler"] if o != "run"])  # run: sde-sample's, the run's own (test_user_configs)
def test_every_sampler_builds_and_samples(option):
    cfg = _compose([f"sampler={option}", *(["sde=ddpm"] if option == "ddpm" else [])])  # DDPM's grid is the chain's steps
    sde = build_sde(cfg)
    fn, grid = build_sampler(cfg)
    ts = grid(sde, dtype=torch.float64)
    dist = sd.GaussianMixture([1.0], torch.zeros(1, 2, dtype=torch.float64))
    x = sde.prior_sample((4, 2), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = fn(sde, dist.score_fn(sde), x, ts[:: max(1, (len(ts) - 1) // 5)] if len(ts) > 6 else ts, generator=torch.Generator().manual_seed(1))
    assert out.samples.shape == (4, 2) and out.nfe > 0


def test_the_samplers_the_issue_names_exist():
    assert {"dpm_solver_3m", "unipc", "ipndm", "dpm_solver_sde", "edm_sde"} <= set(GROUPS["sampler"])
    assert {"euler_maruyama", "pc", "ddim", "dpm_solver", "heun", "ode", "torchsde"} <= set(GROUPS["sampler"])  # the old names stay


@pytest.mark.parametrize(
    "overrides, kind",
    [
        (["sampler=ddim"], None),
        (["sampler=unipc", "sampler.thresholding=static", "sampler.data_range=[0,1]"], S.StaticThreshold),
        (["sampler=dpm_solver_3m", "sampler.thresholding=dynamic", "sampler.threshold_percentile=0.9"], S.DynamicThreshold),
    ],
)
def test_sampler_options_reach_the_driver(overrides, kind):
    """sampler.denoise_to_zero and sampler.thresholding become the driver's denoise_to_zero and
    x0_correction: the denoised output equals Tweedie's formula, and the thresholding object is built
    with the configured range and percentile."""
    cfg = _compose([*overrides, "sampler.denoise_to_zero=true"])
    sde = build_sde(cfg)
    fn, grid = build_sampler(cfg)
    correction = fn.keywords.get("x0_correction")
    assert (correction is None) if kind is None else isinstance(correction, kind)
    if kind is S.StaticThreshold:
        assert (correction.lo, correction.hi) == (0.0, 1.0)
    if kind is S.DynamicThreshold:
        assert correction.percentile == 0.9
    dist = sd.GaussianMixture([1.0], torch.full((1, 2), 0.3, dtype=torch.float64), 0.1)
    x = sde.prior_sample((4, 2), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ts = grid(sde, dtype=torch.float64)
    out = fn(sde, dist.score_fn(sde), x, ts)
    plain = fn.func(sde, dist.score_fn(sde), x, ts, **{k: v for k, v in fn.keywords.items() if k != "denoise_to_zero"})
    torch.testing.assert_close(out.samples, S.tweedie_denoise(sde, dist.score_fn(sde), plain.samples, ts[-1]), rtol=1e-10, atol=1e-10)
    assert out.nfe == plain.nfe + 1


@pytest.mark.parametrize("option", GROUPS["model"])
def test_every_model_builds(option):
    cfg = _compose([f"model={option}"])
    shape = (2,) if "mlp" in option else (3, 32, 32) if option == "ddpmpp_cifar" else (1, 8, 8)
    model = build_score_model(cfg, build_sde(cfg), shape, n_classes=10)
    out = (3, 10) if option.startswith("classifier") else (3, *shape)  # a classifier's logits, else the score
    if option == "autoencoder":  # no time: its forward is the reconstruction
        assert model(torch.randn(3, *shape)).shape == out
        return
    assert model(torch.randn(3, *shape), torch.rand(3)).shape == out


def test_train_defaults_build():
    opts = build_train_options(_compose([]))
    assert opts.steps > 0 and opts.lr > 0


def test_default_experiment_builds_on_the_cpu():
    exp = build_experiment(_compose(SMALL + ["device=cpu"]))
    assert exp.device == torch.device("cpu") and isinstance(exp.sde, sd.VPSDE)
    assert exp.score_model(exp.data.train[:3], torch.rand(3)).shape == (3, 2)


def test_cifar_like_builds_the_ddpmpp_sized_unet_for_32x32_images(tmp_path):
    """experiment=cifar_like: the user's 32x32 RGB images with the DDPM++-sized network of Song et al.
    2021 (128 channels, levels 32/16/8/4, 4 blocks each, attention at 16) and their CIFAR-10 settings."""
    import numpy as np

    path = tmp_path / "images.npz"
    np.savez(path, x=np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8))
    exp = build_experiment(_compose(["experiment=cifar_like", f"data.path={path}", "device=cpu"]))
    assert exp.data.data_shape == (3, 32, 32) and exp.data.levels == 256 and isinstance(exp.sde, sd.VPSDE)
    assert sum(p.numel() for p in exp.score_model.parameters()) == pytest.approx(58.7e6, rel=0.01)
    assert (exp.options.batch_size, exp.options.lr, exp.options.warmup_steps, exp.options.ema_decay) == (128, 2e-4, 5000, 0.9999)
    with torch.no_grad():
        assert exp.score_model(exp.data.train[:2], torch.rand(2)).shape == (2, 3, 32, 32)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sde.beta_min=30"], r"^sde: beta_min \(30.0\) must be smaller than beta_max \(20.0\)"),
        (["sde=ve", "sde.sigma_max=0.001"], r"^sde: sigma_min .* must be smaller"),
        (["train.lr=-0.1"], r"^train: train.lr must be a positive number"),
        (["train.steps=0"], r"train.steps must be an integer >= 1"),
        (["sde._target_=nowhere.Nothing"], r"^sde: cannot import _target_ 'nowhere.Nothing' \(No module named 'nowhere'\)"),
        (["data=npz"], r"^data: Missing mandatory value: data.path"),
        (["seed=-1"], r"seed must be an integer >= 0"),
        (["device=tpu"], r"device: unknown device 'tpu'"),
    ],
)
def test_invalid_values_give_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_experiment(_compose(overrides if "data=npz" in overrides else SMALL + overrides))
    assert "\n" not in str(info.value)


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")
