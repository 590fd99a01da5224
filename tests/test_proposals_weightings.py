"""Noise-level proposals and weightings (issue 24, items 2 and 3): each proposal with its importance
weight has the expectation of uniform t, on Gaussian data with a fixed imperfect linear score whose
per-t expected loss is closed form; the restated weightings compute today's losses bit for bit; the
loss group's names build the objects."""

from __future__ import annotations

import importlib.resources
import math

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch
from analytic import all_sdes, gaussian
from apps import train_config

import sde_diffusion as sd
from sde_diffusion.app.config import ConfigError, build_dataset, build_loss
from sde_diffusion.losses import ImportanceSampled, log_snr_speed

EPS = 1e-5
F64 = torch.float64


def paths() -> dict[str, sd.SDE]:
    return {**all_sdes(), "edm": sd.EDMSDE(), "rf": sd.RectifiedFlow(), "ddpm": sd.DDPMSDE()}


PROPOSALS = {
    "uniform_t": sd.UniformTimeProposal(),
    "uniform_log_snr": sd.UniformLogSNRProposal(),
    "log_normal": sd.LogNormalProposal(),
    "logit_normal": sd.LogitNormalProposal(),
}
WEIGHTINGS = {
    "eps": sd.NoiseWeighting(),
    "velocity": sd.VPredictionWeighting(),
    "min_snr": sd.MinSNRWeighting(),
    "flow_matching": sd.FlowMatchingWeighting(),
    "likelihood": sd.LikelihoodWeighting(),
    "sigmoid": sd.SigmoidWeighting(bias=1.0),
    "edm": sd.EDMWeighting(sigma_data=0.7),
}


def _proposals_for(sde) -> list[str]:
    return [name for name in PROPOSALS if not (name == "logit_normal" and sde.T > 1)]


# ----------------------------------------------------------------- the closed-form per-t loss
DIST = gaussian(dim=2, seed=7)
WRONG_MEAN = DIST.means[0] + torch.tensor([0.4, -0.3], dtype=F64)
WRONG_COV = 1.5 * DIST.covs[0]


def _linear_score(sde, t: torch.Tensor):
    """``(A, b)`` of the fixed imperfect score ``A x + b``: the exact score of the wrong Gaussian
    ``N(WRONG_MEAN, WRONG_COV)`` under the path, ``A = -(m^2 Sigma' + s^2 I)^-1``, ``b = -A m mu'``."""
    m, s = sde.kernel(t.to(F64))
    cov = m[:, None, None] ** 2 * WRONG_COV + s[:, None, None] ** 2 * torch.eye(2, dtype=F64)
    a = -torch.linalg.inv(cov)
    return a, -(a @ (m[:, None] * WRONG_MEAN)[..., None]).squeeze(-1)


def score_fn(sde):
    def score(x, t):
        a, b = _linear_score(sde, t)
        return (a @ x[..., None]).squeeze(-1) + b

    return score


def per_t_loss(sde, t: torch.Tensor) -> torch.Tensor:
    """``e(t) = E || eps_theta(x_t, t) - z ||^2`` for the linear score: with ``eps_theta = -s (A x_t + b)``
    and ``x_t = m x0 + s z``, the residual ``-s m A x0 - (s^2 A + I) z - s b`` has mean
    ``-s m A (mu - mu')`` and covariance ``s^2 m^2 A Sigma A^T + (s^2 A + I)(s^2 A + I)^T``."""
    m, s = sde.kernel(t.to(F64))
    a, _ = _linear_score(sde, t)
    mean = -(s * m)[:, None] * (a @ (DIST.means[0] - WRONG_MEAN)[:, None]).squeeze(-1)
    noise = s[:, None, None] ** 2 * a + torch.eye(2, dtype=F64)
    data = (s * m)[:, None, None] ** 2 * (a @ DIST.covs[0] @ a.transpose(1, 2))
    return mean.pow(2).sum(-1) + data.diagonal(dim1=1, dim2=2).sum(-1) + noise.pow(2).sum((1, 2))


def _log_snr_nodes(sde, n_panels: int = 64, order: int = 32):
    """Composite Gauss-Legendre nodes and weights over the path's log-SNR range, and their times."""
    ends = sde.log_snr(torch.tensor([sde.T, EPS], dtype=F64))
    x, w = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(float(ends[0]), float(ends[1]), n_panels + 1)
    half = np.diff(edges)[:, None] / 2
    lam = torch.tensor(((edges[:-1, None] + edges[1:, None]) / 2 + half * x).ravel(), dtype=F64)
    weights = torch.tensor((half * w).ravel(), dtype=F64)
    return lam, weights, sde.time_from_log_snr(lam, EPS)


def objective(sde, weighting) -> float:
    """The weighting's objective by quadrature over log-SNR: ``(1/(T - eps)) int w e d lambda``, with
    ``w = omega / |d lambda/dt|`` for a weighting stated relative to uniform t."""
    lam, c, t = _log_snr_nodes(sde)
    value = torch.as_tensor(weighting.value(sde, t), dtype=F64)
    if weighting.measure == "t":
        value = value / log_snr_speed(sde, t)
    return float((c * value * per_t_loss(sde, t)).sum()) / (sde.T - EPS)


# ------------------------------------------------------------------------------ expectations
@pytest.mark.parametrize("path", list(paths()))
def test_each_proposal_with_its_importance_weight_has_the_expectation_of_uniform_t(path):
    """By quadrature: ``int q(t) F(t) e(t) dt`` equals the uniform-t objective for every proposal and
    weighting (relative 1e-9), and each proposal's density over t has mass 1 on [eps, T]."""
    sde = paths()[path]
    lam, c, t = _log_snr_nodes(sde)
    speed, e = log_snr_speed(sde, t), per_t_loss(sde, t)
    for name in _proposals_for(sde):
        proposal = PROPOSALS[name]
        q = proposal.density(sde, t, EPS)
        assert float((c * q / speed).sum()) == pytest.approx(1.0, rel=1e-7), name
        for wname, weighting in WEIGHTINGS.items():
            factor = torch.as_tensor(weighting.drawn_from(proposal).weight_over_variance(sde, t, EPS), dtype=F64)
            expected = float((c * q * factor * e / speed).sum())
            assert expected == pytest.approx(objective(sde, weighting), rel=1e-9), (name, wname)


@pytest.mark.parametrize(("path", "name"), [(p, n) for p, sde in paths().items() for n in _proposals_for(sde)])
def test_each_proposal_draws_from_its_stated_density(path, name):
    """Kolmogorov-Smirnov: the draws' log-SNR against the CDF integrated from ``density`` (over t,
    through the Jacobian ``|d lambda / dt|``): the density the importance weight uses is the one sampled
    (every proposal each path takes: logit-normal times lie in (0, 1), so not on EDM's T = 80)."""
    sde = paths()[path]
    proposal = PROPOSALS[name]
    ends = sde.log_snr(torch.tensor([sde.T, EPS], dtype=F64))
    lam = torch.linspace(float(ends[0]), float(ends[1]), 20_001, dtype=F64)
    t = sde.time_from_log_snr(lam, EPS)
    p_lam = np.nan_to_num((proposal.density(sde, t, EPS) / log_snr_speed(sde, t)).numpy())  # logit-normal at t = T = 1: 0/0, limit 0
    cdf = scipy.integrate.cumulative_trapezoid(p_lam, lam.numpy(), initial=0.0)
    draws = proposal.sample(sde, 20_000, EPS, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert float(draws.min()) >= EPS and float(draws.max()) <= sde.T
    pvalue = scipy.stats.kstest(sde.log_snr(draws).numpy(), lambda x: np.interp(x, lam.numpy(), cdf / cdf[-1])).pvalue
    assert pvalue > 1e-3


MATCHED = [
    ("vp", "uniform_t", "eps"),
    ("vp", "uniform_t", "min_snr"),
    ("vp", "uniform_t", "velocity"),
    ("vp", "uniform_t", "sigmoid"),
    ("subvp", "uniform_t", "likelihood"),
    ("vp", "uniform_log_snr", "likelihood"),
    ("ve", "uniform_log_snr", "sigmoid"),
    ("ve", "uniform_log_snr", "eps"),
    ("vp", "log_normal", "edm"),
    ("ve", "log_normal", "edm"),
    ("edm", "log_normal", "edm"),
    ("rf", "logit_normal", "edm"),
    ("rf", "uniform_t", "flow_matching"),
]


@pytest.mark.parametrize("path, proposal, weighting", MATCHED)
def test_the_loss_with_a_proposal_estimates_the_weightings_objective(path, proposal, weighting):
    """Monte Carlo through denoising_score_matching (200,000 draws of t, x0 and z) with the linear
    score: the mean per-sample loss equals the quadrature of the weighting's objective within 5
    standard errors, for proposals whose importance weights stay bounded under the weighting."""
    sde = paths()[path]
    x0 = DIST.sample(200_000, generator=torch.Generator().manual_seed(0), dtype=F64)
    loss = sd.denoising_score_matching(
        score_fn(sde), sde, x0, weighting=WEIGHTINGS[weighting], proposal=PROPOSALS[proposal], generator=torch.Generator().manual_seed(1)
    )
    se = loss.std().item() / math.sqrt(loss.numel())
    assert abs(loss.mean().item() - objective(sde, WEIGHTINGS[weighting])) < 5 * se


def test_the_discrete_proposal_is_the_rectangle_rule_of_uniform_t():
    """DDPM's steps with importance 1: the expected loss is the mean over the N = 1000 steps, the
    objective to O(1/N) (5e-3 relative) for weightings bounded at t -> 0 (the likelihood's g^2/s^2 ~ 1/t
    is not: the chain starts at 1/N, not at eps); its draws are the steps i/N, each about equally often."""
    sde, proposal = sd.DDPMSDE(), sd.DiscreteTimeProposal()
    steps = torch.arange(1, 1001, dtype=F64) / 1000
    for weighting in (sd.NoiseWeighting(), sd.MinSNRWeighting(), sd.VPredictionWeighting()):
        factor = torch.as_tensor(weighting.drawn_from(proposal).weight_over_variance(sde, steps, EPS), dtype=F64)
        assert float((factor * per_t_loss(sde, steps)).mean()) == pytest.approx(objective(sde, weighting), rel=5e-3)
    draws = proposal.sample(sde, 100_000, EPS, generator=torch.Generator().manual_seed(0), dtype=F64)
    counts = torch.bincount((draws * 1000).round().long(), minlength=1001)
    assert torch.equal((draws * 1000).round() / 1000, draws) and counts[0] == 0
    assert scipy.stats.chisquare(counts[1:].numpy()).pvalue > 1e-3


def test_log_snr_speed_is_the_rate_of_the_paths_log_snr():
    """``g^2 / s^2 = -d lambda / dt``, the central difference of the path's own log-SNR, on every path."""
    for name, sde in paths().items():
        t = torch.linspace(0.01, 0.95, 40, dtype=F64) * sde.T
        h = 1e-6 * sde.T
        rate = (sde.log_snr(t + h) - sde.log_snr(t - h)) / (2 * h)
        torch.testing.assert_close(log_snr_speed(sde, t), -rate, rtol=1e-5, atol=0, msg=name)


# ------------------------------------------------------------------- the weightings' formulas
def test_the_weightings_are_their_functions_of_the_noise_level():
    """On the data-prediction error (value times SNR): min-SNR is min(SNR, gamma), v-prediction SNR + 1,
    eps the SNR; the likelihood's weight over uniform t is g^2/s^2; sigmoid and EDM per unit log-SNR."""
    sde = sd.VPSDE()
    t = torch.linspace(0.01, 1.0, 50, dtype=F64)
    snr = sde.log_snr(t).exp()
    torch.testing.assert_close(sd.MinSNRWeighting(gamma=3).value(sde, t) * snr, snr.clamp(max=3.0))
    torch.testing.assert_close(sd.VPredictionWeighting().value(sde, t) * snr, snr + 1)
    torch.testing.assert_close(sd.LikelihoodWeighting().weight_over_variance(sde, t, EPS), sde.diffusion(t) ** 2 / sde.kernel(t)[1] ** 2)
    torch.testing.assert_close(sd.SigmoidWeighting(bias=-1).value(sde, t), torch.sigmoid(-1 - sde.log_snr(t)))
    sigma = sde.log_snr(t).mul(-0.5).exp()
    normal = scipy.stats.norm(2.4, 2.4).pdf(sde.log_snr(t).numpy())
    torch.testing.assert_close(sd.EDMWeighting(sigma_data=0.5).value(sde, t), torch.tensor(normal) * (sigma**2 + 0.25) / 0.25)


@pytest.mark.parametrize("path", ["vp", "ve", "edm"])
def test_loss_edm_is_edms_loss_on_the_denoiser(path):
    """With its own log-normal proposal, the EDM weighting's per-sample loss is Karras et al.'s
    ``lambda(sigma) || D - x0 ||^2`` (Table 1) of the preconditioned denoiser ``D``, on the same draws,
    times the constant mass / (T - eps) (the law's mass on the path's range)."""
    sde = paths()[path]
    net = sd.TimeMLP((2,), hidden_dim=16, n_layers=2).to(F64)
    torch.nn.init.normal_(net.out.weight, std=0.3)
    model = sd.EDMPreconditioning(net, sde, sigma_data=0.7)
    weighting = sd.EDMWeighting(sigma_data=0.7)
    x0 = DIST.sample(64, generator=torch.Generator().manual_seed(0), dtype=F64)
    loss = sd.denoising_score_matching(model, sde, x0, weighting=weighting, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    t = weighting.proposal.sample(sde, 64, EPS, generator=gen, dtype=F64)
    x_t, _, _ = sde.perturb(x0, t, generator=gen)
    m, s = sde.kernel(t)
    sigma = s / m
    edm = (sigma**2 + 0.49) / (sigma * 0.7) ** 2 * (model.denoise(x_t, t) - x0).pow(2).sum(1)
    mass = weighting.proposal.law(sde, EPS).mass
    torch.testing.assert_close(loss, edm * mass / (sde.T - EPS), rtol=1e-9, atol=0)


# ------------------------------------------------------------------ today's losses, bit for bit
def _old_draw(kind, sde, batch, generator, dtype):
    """The times and ratio ``lambda / s^2`` of the weighting classes before they were restated
    (NoiseWeighting, LikelihoodWeighting, ImportanceLikelihoodWeighting, FlowMatchingWeighting,
    DiscreteStepWeighting), written out as they computed them."""
    if kind == "importance":
        ends = sde.log_snr(torch.tensor([EPS, sde.T], dtype=F64))
        z = float(ends[0] - ends[1])
        u = torch.rand(batch, generator=generator, dtype=F64)
        t = sde.time_from_log_snr(sde.log_snr(torch.tensor(EPS, dtype=F64)) - u * z, EPS).to(dtype)
        return t, lambda s: z / (sde.T - EPS)
    if kind == "discrete":
        T = sde.discrete.T
        t = torch.randint(1, T + 1, (batch,), generator=generator).to(dtype) / T
        return t, lambda s: 1.0
    t = EPS + (sde.T - EPS) * torch.rand(batch, generator=generator, dtype=dtype)
    ratios = {
        "noise": lambda s: 1.0,
        "likelihood": lambda s: sde.diffusion(t) ** 2 / s**2,
        "flow_matching": lambda s: (sde.diffusion(t) ** 2 / (2.0 * sde.kernel(t)[1])) ** 2,
    }
    return t, ratios[kind]


RESTATED = {
    "noise": sd.NoiseWeighting(),
    "likelihood": sd.LikelihoodWeighting(),
    "importance": sd.ImportanceLikelihoodWeighting(),
    "flow_matching": sd.FlowMatchingWeighting(),
    "discrete": sd.DiscreteStepWeighting(),
}


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
@pytest.mark.parametrize("kind", list(RESTATED))
def test_the_restated_weightings_compute_todays_losses_bit_for_bit(kind, dtype):
    """Same generator, same draws of t, same weights: the loss of each restated class equals the
    arithmetic of the class it replaces (torch.equal), on every path it runs on."""
    chosen = {"discrete": ["ddpm"]}.get(kind, list(paths()))
    for name in chosen:
        sde = paths()[name]
        net = sd.TimeMLP((2,), hidden_dim=16, n_layers=2).to(dtype)
        torch.nn.init.normal_(net.out.weight, std=0.3)
        model = sd.EpsilonParameterization(net, sde)
        x0 = torch.randn(33, 2, generator=torch.Generator().manual_seed(2), dtype=dtype)
        new = sd.denoising_score_matching(model, sde, x0, weighting=RESTATED[kind], generator=torch.Generator().manual_seed(3))
        gen = torch.Generator().manual_seed(3)
        t, ratio = _old_draw(kind, sde, 33, gen, dtype)
        x_t, z, s = sde.perturb(x0, t, generator=gen)
        old = ratio(s) * (sde.eps_from_score(model(x_t, t), t) - z).pow(2).sum(1)
        assert torch.equal(new, old), name


def _compose(overrides):
    return train_config(*overrides)


OLD_SAVED = {  # the loss section of runs saved before the weightings were restated
    "dsm": {"weighting": {"_target_": "sde_diffusion.NoiseWeighting"}, "reduce": "sum"},
    "dsm_likelihood": {"weighting": {"_target_": "sde_diffusion.LikelihoodWeighting"}, "reduce": "sum"},
    "dsm_importance": {"weighting": {"_target_": "sde_diffusion.ImportanceLikelihoodWeighting"}, "reduce": "sum"},
    "flow_matching": {"weighting": {"_target_": "sde_diffusion.FlowMatchingWeighting"}, "reduce": "sum"},
    "ddpm_simple": {"weighting": {"_target_": "sde_diffusion.DiscreteStepWeighting"}, "reduce": "mean"},
}


@pytest.mark.parametrize("option", list(OLD_SAVED))
def test_saved_loss_configs_build_the_same_loss_as_the_restated_options(option):
    """A run's saved ``loss`` section from before (``weighting: {_target_: sde_diffusion.NoiseWeighting}``,
    no proposal) and today's ``loss=<option>`` give the same per-sample losses, bit for bit."""
    sde_name = {"ddpm_simple": "ddpm", "flow_matching": "rectified_flow"}.get(option, "vp")
    cfg = _compose([f"loss={option}", f"sde={sde_name}"])
    old = _compose([f"sde={sde_name}"])
    old.loss = {"_target_": "sde_diffusion.denoising_score_matching", "_partial_": True, "eps": 1e-5, **OLD_SAVED[option]}
    sde = paths()["ddpm" if option == "ddpm_simple" else "rf" if option == "flow_matching" else "vp"]
    net = sd.TimeMLP((2,), hidden_dim=16, n_layers=2)
    model = sd.EpsilonParameterization(net, sde)
    x0 = torch.randn(17, 2, generator=torch.Generator().manual_seed(4))
    losses = [build_loss(c)(model, sde, x0, generator=torch.Generator().manual_seed(5)) for c in (cfg, old)]
    assert torch.equal(losses[0], losses[1])


# ------------------------------------------------------------------------ the loss group's names
@pytest.mark.parametrize(
    "by_name, by_group",
    [
        (["loss.weighting=min_snr"], ["loss/weighting=min_snr"]),
        (["loss.proposal=log_normal"], ["loss/proposal=log_normal"]),
        (["loss=ssm", "loss.weighting=sigmoid"], ["loss=ssm", "loss/weighting=sigmoid"]),
        (["loss.weighting=edm", "loss.proposal=logit_normal"], ["loss/weighting=edm", "loss/proposal=logit_normal"]),
    ],
)
def test_a_weighting_or_proposal_given_by_name_is_its_option(by_name, by_group):
    """``loss.weighting=<name>`` (a string over the group's node) builds what ``loss/weighting=<name>`` does."""
    built = [build_loss(_compose(o), build_dataset(_compose(o))) for o in (by_name, by_group)]
    assert repr(built[0].keywords) == repr(built[1].keywords)


def _options(key: str) -> list[str]:
    folder = importlib.resources.files("sde_diffusion.conf") / "loss" / key
    return sorted(e.name.removesuffix(".yaml") for e in folder.iterdir() if e.name.endswith(".yaml"))


@pytest.mark.parametrize("key, name", [(key, name) for key in ("weighting", "proposal") for name in _options(key)])
def test_every_weighting_and_proposal_option_builds_a_loss(key, name):
    """Each file of conf/loss/weighting/ and conf/loss/proposal/ builds and gives finite per-sample values
    (with loss=dsm, on VP; the discrete steps on sde=ddpm)."""
    cfg = _compose([f"loss/{key}={name}", *(["sde=ddpm"] if name == "discrete" else [])])
    sde = paths()["ddpm" if name == "discrete" else "vp"]
    loss = build_loss(cfg, build_dataset(cfg))(lambda x, t: -x, sde, torch.randn(8, 2), generator=torch.Generator().manual_seed(0))
    assert loss.shape == (8,) and torch.isfinite(loss).all()


def test_the_shipped_options_build_and_unknown_names_are_refused():
    assert (
        repr(build_loss(_compose(["loss/weighting=min_snr", "loss.weighting.gamma=2"])).keywords["weighting"]) == "MinSNRWeighting(gamma=2)"
    )
    for key, name in (("weighting", "snr"), ("proposal", "lognormal")):
        with pytest.raises(ConfigError, match=f"loss.{key}={name} is not an option; choose one of"):
            build_loss(_compose([f"loss.{key}={name}"]))


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["model.preconditioning=edm", "model.sigma_data=1.5"], 1.5),
        (["model.preconditioning=edm"], "estimate"),
        ([], "estimate"),
        (["loss.weighting.sigma_data=0.9"], 0.9),
    ],
)
def test_loss_edm_takes_sigma_data_from_the_model(overrides, expected):
    """``loss=edm``'s ``sigma_data: auto`` is ``model.sigma_data`` under EDM preconditioning, else the
    training data's standard deviation (the value ``model.sigma_data=auto`` gives the model)."""
    cfg = _compose(["loss=edm", *overrides])
    data = build_dataset(cfg)
    weighting = build_loss(cfg, data).keywords["weighting"]
    assert weighting.sigma_data == (sd.estimate_sigma_data(data.train) if expected == "estimate" else expected)
    assert weighting.proposal.P_mean == pytest.approx(-1.2 + math.log(weighting.sigma_data / 0.5), abs=1e-12)
    assert weighting.proposal.P_std == 1.2


def test_loss_edm_keeps_a_P_mean_that_is_given():
    """A number at ``loss.weighting.P_mean`` (what runs saved before ``null`` existed say) is used as given."""
    cfg = _compose(["loss=edm", "loss.weighting.P_mean=-1.2"])
    assert build_loss(cfg, build_dataset(cfg)).keywords["weighting"].proposal.P_mean == -1.2


@pytest.mark.parametrize("k", [0.25, 4.62])
def test_edm_weighting_moves_with_the_data_scale(k):
    """Scaling the data by ``k`` scales every noise level of the same problem by ``k``: on EDM's path
    (sigma = t) the weighting of ``sigma_data = 0.5 k`` at ``k t`` equals that of ``sigma_data = 0.5``
    at ``t`` (per unit of log-SNR, which only shifts), and its mean of ln sigma is EDM's -1.2 + ln k."""
    sde = sd.EDMSDE(sigma_min=0.002, sigma_max=1000.0)
    t = torch.tensor([0.01, 0.1, 0.3, 1.0, 5.0], dtype=F64)
    base, scaled = sd.EDMWeighting(sigma_data=0.5), sd.EDMWeighting(sigma_data=0.5 * k)
    assert base.P_mean == -1.2 and scaled.P_mean == pytest.approx(-1.2 + math.log(k), abs=1e-12)
    torch.testing.assert_close(scaled.value(sde, k * t), base.value(sde, t), rtol=1e-12, atol=0)


def test_refusals_name_the_fix():
    x0 = torch.randn(4, 2)
    with pytest.raises(ValueError, match="LogitNormalProposal draws times in \\(0, 1\\), but EDMSDE runs to T = 80: use LogNormalProposal"):
        sd.denoising_score_matching(lambda x, t: -x, sd.EDMSDE(), x0, proposal=sd.LogitNormalProposal())
    with pytest.raises(ValueError, match="needs a discrete-time SDE"):
        sd.denoising_score_matching(lambda x, t: -x, sd.VPSDE(), x0, proposal=sd.DiscreteTimeProposal())
    with pytest.raises(ValueError, match="first step T / n_steps = 1e-06 lies below eps"):
        sd.denoising_score_matching(lambda x, t: -x, sd.VPSDE(), x0, proposal=sd.DiscreteTimeProposal(n_steps=1_000_000))
    with pytest.raises(ValueError, match="puts no probability on"):
        sd.denoising_score_matching(lambda x, t: -x, sd.VPSDE(), x0, proposal=sd.LogNormalProposal(P_mean=-60, P_std=0.1))

    class OwnTimes:  # a duck-typed weighting draws its own times
        def sample_time(self, sde, batch, eps, *, generator=None, device=None, dtype=None):
            return torch.full((batch,), 0.5, dtype=dtype)

        def weight(self, sde, t, eps):
            return torch.ones_like(t)

    with pytest.raises(TypeError, match="draws its own times"):
        sd.denoising_score_matching(lambda x, t: -x, sd.VPSDE(), x0, weighting=OwnTimes(), proposal=sd.UniformTimeProposal())
    with pytest.raises(TypeError, match="proposal must be a sde_diffusion Proposal"):
        ImportanceSampled(sd.NoiseWeighting(), "log_normal")
    with pytest.raises(ValueError, match="gamma must be a positive number"):
        sd.MinSNRWeighting(gamma=0)


def test_sliced_score_matching_takes_a_proposal_and_keeps_the_likelihood_kernel_free():
    """SSM's default weighting needs no kernel over uniform t; with a log-SNR proposal it does, and says so."""
    from analytic import KernelFreeVP

    x0 = torch.randn(8, 2)
    sd.sliced_score_matching(lambda x, t: -x, KernelFreeVP(), x0, simulation_steps=5)
    with pytest.raises(ValueError, match="needs the SDE's kernel"):
        sd.sliced_score_matching(lambda x, t: -x, KernelFreeVP(), x0, proposal=sd.UniformLogSNRProposal())
    loss = sd.sliced_score_matching(lambda x, t: -x, sd.VPSDE(), x0, weighting=sd.MinSNRWeighting(), proposal=sd.LogNormalProposal())
    assert loss.shape == (8,) and torch.isfinite(loss).all()


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ["sde=ve", "model.preconditioning=edm", "loss=edm"],
        ["loss.weighting=min_snr"],
        ["loss.weighting=sigmoid", "loss.proposal=uniform_log_snr"],
        ["sde=rectified_flow", "model=mlp_velocity", "loss=flow_matching", "loss.proposal=logit_normal"],
    ],
    ids=" ".join,
)
def test_sde_train_runs_each_new_loss_option(overrides, tmp_path):
    """A short run (300 steps) trains, samples and evaluates with each new option; its summary is finite."""
    import json

    from apps import run_app

    run = tmp_path / "run"
    args = [*overrides, "train.steps=300", "n_samples=200", "eval_points=100", "progress=false", f"hydra.run.dir={run}"]
    code, _, err = run_app("train", *args, cwd=tmp_path)
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert math.isfinite(summary["held_out_loss_ema"]) and math.isfinite(summary["held_out_nll_nats_per_dim"])
