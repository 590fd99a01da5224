"""EDM's preconditioning on every Gaussian path (Karras et al. 2022, Table 1): the ideal network makes
the denoiser the posterior mean, its input and training target have unit variance, sigma_data
travels with the checkpoint, and ``model.preconditioning`` / ``model.sigma_data`` build it."""

from __future__ import annotations

import math

import pytest
import torch
from analytic import mixture
from apps import run_app, train_config
from omegaconf import OmegaConf

import sde_diffusion as sd
from sde_diffusion.app.config import ConfigError, build_score_model
from sde_diffusion.app.runs import build_experiment
from sde_diffusion.examples.quadratic_vp import QuadraticVPSDE
from sde_diffusion.models import preconditioning
from sde_diffusion.training import load_checkpoint, save_checkpoint

F64 = torch.float64

PATHS = {
    "vp": sd.VPSDE(),
    "subvp": sd.SubVPSDE(),
    "ve": sd.VESDE(),
    "cosine": sd.CosineVPSDE(),
    "edm": sd.EDMSDE(),
    "rectified_flow": sd.RectifiedFlow(),
    "ddpm": sd.DDPMSDE(),
    "user": QuadraticVPSDE(),
}


def table1(sigma, sd_):
    """Karras et al. 2022, Table 1: ``(c_skip, c_out, c_in, c_noise)`` at noise level ``sigma``."""
    norm = torch.sqrt(sigma**2 + sd_**2)
    return sd_**2 / norm**2, sigma * sd_ / norm, 1 / norm, torch.log(sigma) / 4


def per_sample(v, x):
    return v.reshape(v.shape + (1,) * (x.dim() - 1))


@pytest.mark.parametrize("shape", [(3,), (1, 2, 2)], ids=["points", "images"])
@pytest.mark.parametrize("name", PATHS)
def test_the_ideal_network_makes_the_denoiser_the_posterior_mean_on_every_path(name, shape):
    """F written from the exact mixture score, seeing only what the wrapper gives it (c_in y and
    c_noise), makes D = E[x0 | x_t] (Tweedie) and the score the exact one, to 1e-6."""
    sde, sigma_data = PATHS[name], 0.7
    dist = mixture(dim=math.prod(shape), seed=2, event_shape=shape)
    exact = dist.score_fn(sde)

    class IdealF(torch.nn.Module):
        def forward(self, u, c_noise):
            sigma = torch.exp(4 * c_noise)
            t = sde.time_from_log_snr(-2 * torch.log(sigma)).to(u)
            c_skip, c_out, c_in, _ = (per_sample(c, u) for c in table1(sigma, sigma_data))
            m = per_sample(sde.kernel(t)[0], u)
            x = m * u / c_in
            return (sde.x0_from_score(x, exact(x, t), t) - c_skip * u / c_in) / c_out

    model = sd.EDMPreconditioning(IdealF(), sde, sigma_data=sigma_data)
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(0.05, 0.95, 12, dtype=F64) * sde.T
    x, _, _ = sde.perturb(dist.sample(12, generator=g, dtype=F64), t, generator=g)
    posterior_mean = sde.x0_from_score(x, exact(x, t), t)
    torch.testing.assert_close(model.denoise(x, t), posterior_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model(x, t), exact(x, t), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["vp", "ve", "edm", "rectified_flow", "user"])
def test_on_gaussian_data_the_input_and_the_training_target_have_unit_variance_at_every_sigma(name):
    """Data N(0, sd^2 I): the network's input c_in y and the F that makes the score the denoising
    target -eps/s (what the DSM loss regresses on, read through the wrapper with F = 0) have
    variance 1 at each time, within 3 standard errors of a sample variance."""
    sde, sigma_data, n, dim = PATHS[name], 2.0, 20_000, 2
    inputs = []

    class Zero(torch.nn.Module):
        def forward(self, u, c_noise):
            inputs.append(u)
            return torch.zeros_like(u)

    model = sd.EDMPreconditioning(Zero(), sde, sigma_data=sigma_data)
    g = torch.Generator().manual_seed(1)
    se = 3 * math.sqrt(2 / (n * dim))
    for t in torch.tensor([0.02, 0.2, 0.5, 0.8, 0.98], dtype=F64) * sde.T:
        ts = t.expand(n)
        x0 = sigma_data * torch.randn(n, dim, generator=g, dtype=F64)
        x, eps, _ = sde.perturb(x0, ts, generator=g)
        m, s = sde.kernel(ts)
        score_at_zero = model(x, ts)
        c_out = table1(s / m, sigma_data)[1][:, None]
        target = (-eps / s[:, None] - score_at_zero) * s[:, None] ** 2 / (m[:, None] * c_out)
        assert abs(inputs[-1].var().item() - 1) < se, (float(t), inputs[-1].var())
        assert abs(target.var().item() - 1) < se, (float(t), target.var())
        torch.testing.assert_close(target, (x0 - table1(s / m, sigma_data)[0][:, None] * x / m[:, None]) / c_out)


class TwiceTheChannels(torch.nn.Module):
    """A learned-variance network: F = x, r = 0.2, recording the labels and conditioning it gets."""

    def __init__(self):
        super().__init__()
        self.seen = {}

    def forward(self, u, c_noise, y=None, cond=None):
        self.seen = {"y": y, "cond": cond}
        return torch.cat([u, torch.full_like(u, 0.2)], dim=1)


def test_a_learned_variance_keeps_its_channel_and_labels_and_conditioning_pass_through():
    sde = sd.DDPMSDE()
    net = TwiceTheChannels()
    model = sd.EDMPreconditioning(net, sde, sigma_data=0.5, learn_variance=True)
    assert model.learns_variance
    x, t, y = torch.randn(4, 1, 2, 2, dtype=F64), torch.full((4,), 0.3, dtype=F64), torch.arange(4)
    score, v = model(x, t, y, cond="image", variance=True)
    assert net.seen == {"y": y, "cond": "image"}
    torch.testing.assert_close(v, torch.full_like(x, 0.6))
    torch.testing.assert_close(score, model(x, t, y, cond="image"))
    m, s = sde.kernel(t)
    c_skip, c_out, c_in, _ = (per_sample(c, x) for c in table1(s / m, 0.5))
    denoised = c_skip * x / per_sample(m, x) + c_out * c_in * x / per_sample(m, x)
    torch.testing.assert_close(score, sde.score_from_x0(x, denoised, t))
    with pytest.raises(ValueError, match="twice the channels"):
        sd.EDMPreconditioning(lambda u, c: u, sde, learn_variance=True)(x, t)
    with pytest.raises(TypeError, match="no variance output"):
        sd.EDMPreconditioning(lambda u, c: u, sde)(x, t, variance=True)
    with pytest.raises(ValueError, match="sigma_data must be a positive number"):
        sd.EDMPreconditioning(lambda u, c: u, sde, sigma_data=0.0)


def test_sigma_data_is_part_of_the_state_and_an_older_state_keeps_the_configured_value():
    sde = sd.VESDE()
    model = sd.EDMPreconditioning(sd.TimeMLP((2,), hidden_dim=8, n_layers=1), sde, sigma_data=0.8)
    state = model.state_dict()
    assert float(state["sigma_data"]) == 0.8 and state["sigma_data"].dtype == F64
    other = sd.EDMPreconditioning(sd.TimeMLP((2,), hidden_dim=8, n_layers=1), sde, sigma_data=3.0)
    other.load_state_dict(state)  # a checkpoint's value wins over the configured one
    assert float(other.sigma_data) == 0.8
    older = {k: v for k, v in state.items() if k != "sigma_data"}  # written before sigma_data was stored
    other = sd.EDMPreconditioning(sd.TimeMLP((2,), hidden_dim=8, n_layers=1), sde, sigma_data=3.0)
    other.load_state_dict(older)
    assert float(other.sigma_data) == 3.0


def test_estimate_sigma_data_is_the_standard_deviation_over_all_values(monkeypatch):
    x = 3.0 + 0.5 * torch.randn(1000, 3, 2, generator=torch.Generator().manual_seed(0))
    expected = x.double().reshape(-1).std().item()
    assert sd.estimate_sigma_data(x) == pytest.approx(expected, rel=1e-12)
    monkeypatch.setattr(preconditioning, "_CHUNK", 7)  # the chunked sums over a large data set
    assert sd.estimate_sigma_data(x) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="at least 2 values"):
        sd.estimate_sigma_data(torch.ones(1, 1))


def _compose(*overrides):
    small = [] if {"model=unet", "experiment=digits"} & set(overrides) else ["model.net.hidden_dim=8", "model.net.n_layers=1"]
    return train_config(*small, *overrides)


def test_the_config_builds_the_preconditioning_on_noise_and_data_predicting_models():
    data = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 1.7
    sde = sd.VESDE()
    model = build_score_model(_compose("model.preconditioning=edm"), sde, (2,), train_data=data)
    assert isinstance(model, sd.EDMPreconditioning) and float(model.sigma_data) == sd.estimate_sigma_data(data)
    model = build_score_model(_compose("model.preconditioning=edm", "model.sigma_data=0.5"), sde, (2,))
    assert float(model.sigma_data) == 0.5 and not model.learns_variance
    model = build_score_model(_compose("model=mlp_learned_variance", "model.preconditioning=edm", "model.sigma_data=1"), sde, (2,))
    assert model.learns_variance and model(torch.randn(3, 2), torch.full((3,), 0.5), variance=True)[1].shape == (3, 2)
    model = build_score_model(_compose("model=unet", "model.net.n_classes=auto", "model.preconditioning=edm"), sde, (1, 8, 8), 10, data)
    assert isinstance(model, sd.EDMPreconditioning) and model.n_classes == 10
    assert build_score_model(_compose(), sde, (2,), train_data=data).__class__ is sd.EpsilonParameterization


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model=mlp_velocity", "model.preconditioning=edm"], "in place of model.parameterization's VelocityParameterization"),
        (["model.preconditioning=karras"], "model.preconditioning must be one of none, edm, got 'karras'"),
        (["model.sigma_data=0.5"], "model.preconditioning=none does not use: add model.preconditioning=edm"),
        (["model.preconditioning=edm", "model.sigma_data=-1"], "model.sigma_data must be auto or a positive number"),
        (["model.preconditioning=edm", "model.sigma_data=abc"], "model.sigma_data must be auto or a positive number"),
        (["model=mlp_edm", "+model.parameterization.sigma_data=2"], "give it once, as model.sigma_data"),
        (["model.preconditioning=edm"], "model.sigma_data=auto is estimated from the training data"),
    ],
)
def test_contradictory_or_invalid_preconditioning_options_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_score_model(_compose(*overrides), sd.VESDE(), (2,))
    assert "\n" not in str(info.value)


def test_mlp_edm_and_the_config_of_its_earlier_runs_build_the_same_model():
    """model=mlp_edm (now model.preconditioning=edm) and its saved config from before (the
    parameterization EDMPreconditioning with its own sigma_data, no preconditioning key) give the
    same weights and outputs, so earlier runs load and train as they did."""
    new = _compose("model=mlp_edm")
    old = OmegaConf.to_container(_compose("model.parameterization._target_=sde_diffusion.EDMPreconditioning"))
    old["model"]["parameterization"]["sigma_data"] = 1.0
    del old["model"]["preconditioning"], old["model"]["sigma_data"]
    old = OmegaConf.create(old)  # as load_run reads a saved config: untyped
    sde, x, t = sd.EDMSDE(), torch.randn(16, 2), torch.rand(16) * 80
    models = []
    for cfg in (new, old):
        torch.manual_seed(0)
        models.append(build_score_model(cfg, sde, (2,)))
    assert all(isinstance(m, sd.EDMPreconditioning) and float(m.sigma_data) == 1.0 for m in models)
    assert torch.equal(models[0](x, t), models[1](x, t))


@pytest.mark.slow
def test_a_preconditioned_run_with_sigma_data_auto_reloads_and_resumes_with_its_stored_value(tmp_path):
    """sde-train model.preconditioning=edm model.sigma_data=auto estimates sigma_data once and keeps
    it in the checkpoint; load_run (sde-sample) and train.resume use the stored value, also when the
    data would now give another (the stored one is changed here to show it is the one read)."""
    run = tmp_path / "run"
    common = ["sde=ve", "model.preconditioning=edm", "model.sigma_data=auto", "data=eight_gaussians", "n_samples=200"]
    common += ["eval_points=100", "progress=false", f"hydra.run.dir={run}"]
    code, _, err = run_app("train", *common, "train.steps=300", cwd=tmp_path)
    assert code == 0, err
    estimate = sd.estimate_sigma_data(sd.load_run(run, "cpu").data.train)
    path = run / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    assert float(state["model"]["sigma_data"]) == float(state["ema"]["module.sigma_data"]) == estimate
    state["model"]["sigma_data"] = state["ema"]["module.sigma_data"] = torch.tensor(1.25, dtype=F64)
    save_checkpoint(path, state)
    for weights in ("ema", "raw"):
        assert float(sd.load_run(run, "cpu", weights=weights).score_model.sigma_data) == 1.25
    code, out, err = run_app("sample", f"run_dir={run}", "n_samples=100", "progress=false", f"hydra.run.dir={tmp_path / 's'}", cwd=tmp_path)
    assert code == 0, err
    code, _, err = run_app("train", *common, "train.steps=350", "train.resume=true", cwd=tmp_path)
    assert code == 0, err
    resumed = load_checkpoint(path)
    assert int(resumed["step"]) == 350 and float(resumed["model"]["sigma_data"]) == 1.25


@pytest.mark.parametrize(
    "overrides",
    [
        ["sde=ddpm", "loss=ddpm_hybrid", "model=mlp_learned_variance", "sampler=ddpm"],  # learned variances, iDDPM's hybrid loss
        ["experiment=digits", "model.net.channels=8", "train.steps=1"],  # the class-conditional U-Net
    ],
    ids=["learned_variance", "digits"],
)
def test_preconditioned_runs_build_with_their_loss_sampler_and_labels(overrides):
    """build_experiment evaluates the loss once on two training points (with their labels) and tries
    the sampler's grid, so a model, loss and sampler that do not fit together would fail here."""
    exp = build_experiment(_compose(*overrides, "model.preconditioning=edm"))
    assert isinstance(exp.score_model, sd.EDMPreconditioning)
    assert float(exp.score_model.sigma_data) == sd.estimate_sigma_data(exp.data.train)
    assert exp.score_model.learns_variance == ("loss=ddpm_hybrid" in overrides)
