"""Kernel-first SDEs (issue 16, items 1-2): a path ``x_t = m(t) x_0 + s(t) z`` is all a subclass
states; drift, diffusion, prior and log-SNR are derived, and match the closed forms the classes
wrote by hand before; a user's path of a few lines trains, samples and gives exact likelihoods."""

from __future__ import annotations

import math

import pytest
import torch
from analytic import gaussian, mixture

import sde_diffusion as sd
from sde_diffusion.examples.quadratic_vp import QuadraticVPSDE
from sde_diffusion.likelihood import log_likelihood

F64 = torch.float64


def _closed_form_g(name: str, t: torch.Tensor) -> torch.Tensor:
    """The diffusion coefficients as the previous classes wrote them (Song et al. 2021, Eq. 9, 11, 12)."""
    if name in ("vp", "vp_cosine", "custom"):
        beta = {"vp": sd.LinearBeta().beta, "vp_cosine": sd.CosineBeta().beta, "custom": lambda u: 0.1 + 29.9 * u**2}[name](t)
        return beta.sqrt()
    if name == "subvp":
        schedule = sd.LinearBeta()
        return torch.sqrt(schedule.beta(t) * -torch.expm1(-2.0 * schedule.integral(t)))
    if name == "ve":
        return 0.01 * (5000.0**t) * math.sqrt(2.0 * math.log(5000.0))
    raise KeyError(name)


def _closed_form_drift_rate(name: str, t: torch.Tensor) -> torch.Tensor:
    """``a(t)`` of the drift ``a(t) x``: ``-beta(t)/2`` for the VP family, 0 for VE."""
    if name == "ve":
        return torch.zeros_like(t)
    return -0.5 * _closed_form_g({"subvp": "vp"}.get(name, name), t) ** 2


SHIPPED = {"vp": sd.VPSDE(), "subvp": sd.SubVPSDE(), "ve": sd.VESDE(), "vp_cosine": sd.CosineVPSDE(), "custom": QuadraticVPSDE()}


@pytest.mark.parametrize("name", SHIPPED)
def test_derived_drift_and_diffusion_equal_the_closed_forms(name):
    sde = SHIPPED[name]
    assert isinstance(sde, sd.GaussianPathSDE)
    t = torch.linspace(0.0, 1.0, 201, dtype=F64)
    if name == "vp_cosine":
        t = t[t < 0.99]  # beta reaches its clip of 999 at t = 0.9999; values there are ~1e3
    x = torch.randn(t.shape[0], 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sde.diffusion(t), _closed_form_g(name, t), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sde.drift(x, t), _closed_form_drift_rate(name, t)[:, None] * x, rtol=1e-6, atol=1e-6)


def test_the_quadratic_example_gives_only_m_and_s():
    """The documented user SDE states the path alone: its rates come from autograd and equal the
    closed forms d log m/dt = -beta/2 and d s^2/dt = beta exp(-B)."""
    sde = QuadraticVPSDE()
    assert {"drift", "diffusion", "kernel", "log_mean_coeff_rate", "variance_rate"}.isdisjoint(vars(QuadraticVPSDE))
    t = torch.linspace(0.0, 1.0, 11, dtype=F64)
    beta = 0.1 + 29.9 * t**2
    torch.testing.assert_close(sde.log_mean_coeff_rate(t), -0.5 * beta)
    torch.testing.assert_close(sde.variance_rate(t), beta * torch.exp(-sde.beta_integral(t)))
    assert sde.log_mean_coeff_rate(torch.tensor(0.5)).dtype == torch.float32  # in the caller's dtype


class ScaledPath(sd.GaussianPathSDE):
    """A user's path in a few lines, neither VP nor VE: ``m = exp(-6 t^2)``, ``s = 1.5 sqrt(1 - exp(-12 t^2))``;
    the derived SDE is ``dx = -12 t x dt + sqrt(54 t) dw`` and the prior N(0, 1.5^2 I) (s(1))."""

    def mean_coeff(self, t):
        return torch.exp(-6.0 * t**2)

    def std(self, t):
        return 1.5 * torch.sqrt(-torch.expm1(-12.0 * t**2))


class ConstantMeanPath(sd.GaussianPathSDE):
    """A VE-type user path written as the README writes paths: ``m = torch.ones_like(t)`` (no graph
    back to ``t``) and ``s = 0.05 (1000)^t``; the derived SDE is ``dx = s sqrt(2 ln 1000) dw`` with zero drift."""

    def mean_coeff(self, t):
        return torch.ones_like(t)

    def std(self, t):
        return 0.05 * 1000.0**t


class ConstantNumberPath(ConstantMeanPath):
    """The same path with ``m`` a plain number, which does not even have ``t``'s shape."""

    def mean_coeff(self, t):
        return 1.0


def test_a_users_path_derives_its_sde_prior_and_log_snr():
    sde = ScaledPath()
    t = torch.linspace(0.0, 1.0, 21, dtype=F64)
    x = torch.ones(21, 2, dtype=F64)
    torch.testing.assert_close(sde.diffusion(t), torch.sqrt(54.0 * t))
    torch.testing.assert_close(sde.drift(x, t), -12.0 * t[:, None] * x)
    assert sde.prior_std == pytest.approx(1.5 * math.sqrt(-math.expm1(-12.0)))
    lam = sde.log_snr(t[1:])
    torch.testing.assert_close(sde.time_from_log_snr(lam), t[1:])
    n = 20_000  # the kernel is what the derived SDE produces (5 standard errors of a sample variance)
    x0 = torch.full((n, 2), 1.2, dtype=F64)
    xt = sd.simulate_forward(sde, x0, 0.6, 600, generator=torch.Generator().manual_seed(3))
    m, s = sde.kernel(torch.tensor(0.6, dtype=F64))
    assert (xt.mean(0) - m * 1.2).abs().max() < 5 * s / math.sqrt(n) + 0.01 * s
    assert ((xt.var(0) / s**2 - 1).abs() < 5 * math.sqrt(2 / n) + 0.01).all()


@pytest.mark.parametrize(
    "sampler, options, grid, n_steps",
    [
        (sd.ddim, {}, sd.log_snr_time_grid, 100),
        (sd.dpm_solver_pp, {"order": 2}, sd.log_snr_time_grid, 30),
        (sd.heun, {}, sd.edm_time_grid, 30),
        (sd.probability_flow_sampler, {"method": "rk4"}, sd.uniform_time_grid, 100),
        (sd.euler_maruyama, {}, sd.uniform_time_grid, 1000),
    ],
)
@pytest.mark.parametrize("path", [ScaledPath, sd.RectifiedFlow, ConstantMeanPath])
def test_a_users_path_samples_its_gaussian_data_with_every_kernel_sampler(sampler, options, grid, n_steps, path):
    """Exact score of Gaussian data: samples have the mean and covariance of p_eps within 5
    standard errors (covariance entries: se = sqrt((S_ij^2 + S_ii S_jj) / n)); for the user's path,
    rectified flow and a path written with ``m = torch.ones_like(t)`` (whose Euler-Maruyama and
    probability-flow samplers use the derived drift and diffusion), with no special case in any sampler."""
    sde, dist, eps, n = path(), gaussian(dim=2, seed=4), 1e-3, 8000
    g = torch.Generator().manual_seed(5)
    x_T = sde.prior_sample((n, 2), generator=g, dtype=F64)
    with torch.no_grad():
        out = sampler(sde, dist.score_fn(sde), x_T, grid(sde, n_steps, eps, dtype=F64), generator=g, **options).samples
    m, s = sde.kernel(torch.tensor(eps, dtype=F64))
    mean, cov = m * dist.means[0], m**2 * dist.covs[0] + s**2 * torch.eye(2, dtype=F64)
    se_mean = (cov.diagonal() / n).sqrt()
    assert ((out.mean(0) - mean).abs() < 5 * se_mean).all(), (out.mean(0), mean)
    se_cov = ((cov**2 + cov.diagonal()[:, None] * cov.diagonal()[None, :]) / n).sqrt()
    assert ((torch.cov(out.T) - cov).abs() < 5 * se_cov + 0.01 * cov.abs().max()).all(), (torch.cov(out.T), cov)


@pytest.mark.parametrize("path", [ScaledPath, ConstantMeanPath])
def test_a_users_path_gives_the_closed_form_likelihood(path):
    sde, dist, eps = path(), mixture(dim=2, seed=1), 1e-3
    x = dist.sample(16, generator=torch.Generator().manual_seed(0), dtype=F64)
    out = log_likelihood(sde, dist.score_fn(sde), x, eps=eps, rtol=1e-8, atol=1e-8)
    exact_terminal = out.logp - sde.prior_logp(out.latent) + dist.log_prob(out.latent, sde.T, sde)
    assert (exact_terminal - dist.log_prob(x, eps, sde)).abs().max() / 2 < 1e-4


@pytest.mark.parametrize("path", [ConstantMeanPath, ConstantNumberPath])
def test_a_path_with_a_constant_mean_coefficient_has_zero_drift_and_the_closed_form_diffusion(path):
    sde, t = path(), torch.linspace(0.0, 1.0, 11, dtype=F64)
    x = torch.randn(11, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sde.drift(x, t), torch.zeros_like(x))
    torch.testing.assert_close(sde.diffusion(t), 0.05 * 1000.0**t * math.sqrt(2 * math.log(1000.0)))
    m, s = sde.kernel(t)
    assert m.shape == s.shape == t.shape and torch.equal(m, torch.ones_like(t))
    assert sde.prior_std == pytest.approx(50.0)


FLOW_PATHS = {"scaled": ScaledPath(), "constant_mean": ConstantMeanPath(), **{k: SHIPPED[k] for k in ("vp", "subvp", "ve")}}


def _closed_form_flow_coefficients(name: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a(t), g(t)^2)`` in closed form: ScaledPath's ``-12 t`` and ``54 t`` (its docstring),
    ConstantMeanPath's ``0`` and ``2 ln(1000) s^2``, the shipped SDEs' from Song et al. 2021."""
    if name == "scaled":
        return -12.0 * t, 54.0 * t
    if name == "constant_mean":
        return torch.zeros_like(t), 2.0 * math.log(1000.0) * (0.05 * 1000.0**t) ** 2
    return _closed_form_drift_rate(name, t), _closed_form_g(name, t) ** 2


@pytest.mark.parametrize("name", FLOW_PATHS)
def test_the_one_place_flow_coefficients_give_f_minus_half_g2_score(name):
    """The probability-flow velocity ``f - g^2 score / 2`` (Song et al. 2021, Eq. 13) and the reverse
    drift ``f - g^2 score`` (Eq. 6), built from ``flow_coefficients`` (both rates in one derivation),
    equal the same built the old way, from each rate derived on its own (``a = d log m/dt``,
    ``g^2 = d s^2/dt - 2 a s^2``), to round-off, and the closed forms; in float64 and float32."""
    sde = FLOW_PATHS[name]
    t = torch.linspace(0.0, 1.0, 41, dtype=F64)
    x = torch.randn(41, 3, dtype=F64, generator=torch.Generator().manual_seed(0))

    def score(x, t):  # any field: the coefficients must not depend on it
        return -x + torch.sin(3.0 * x) * t[:, None]

    a_old = sde.log_mean_coeff_rate(t)
    g2_old = (sde.variance_rate(t) - 2.0 * a_old * sde.kernel(t)[1] ** 2).clamp(min=0.0)
    a, g2 = sde.flow_coefficients(t)
    torch.testing.assert_close(a, a_old, rtol=1e-13, atol=0.0)
    torch.testing.assert_close(g2, g2_old, rtol=1e-13, atol=1e-13)
    a_exact, g2_exact = _closed_form_flow_coefficients(name, t)
    torch.testing.assert_close(a, a_exact, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g2, g2_exact, rtol=1e-6, atol=1e-6)
    f_old = a_old[:, None] * x
    torch.testing.assert_close(sde.probability_flow(score).drift(x, t), f_old - 0.5 * g2_old[:, None] * score(x, t), rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(sde.reverse(score).drift(x, t), f_old - g2_old[:, None] * score(x, t), rtol=1e-13, atol=1e-12)
    x32, t32 = x.float(), t.float()
    velocity32 = sde.probability_flow(score).drift(x32, t32)
    assert velocity32.dtype == torch.float32
    torch.testing.assert_close(velocity32, sde.probability_flow(score).drift(x, t).float(), rtol=1e-5, atol=1e-3)


class CountedPath(ScaledPath):
    """ScaledPath counting the autograd derivations of ``m`` and ``s``: calls with a ``t`` that requires grad."""

    def __init__(self):
        self.derivations = {"m": 0, "s": 0}

    def mean_coeff(self, t):
        self.derivations["m"] += int(torch.as_tensor(t).requires_grad)
        return super().mean_coeff(t)

    def std(self, t):
        self.derivations["s"] += int(torch.as_tensor(t).requires_grad)
        return super().std(t)


@pytest.mark.parametrize("time_variable", ["t", "log_snr"])
def test_each_evaluation_of_the_likelihoods_flow_derives_each_rate_once(time_variable):
    """The drift and the diffusion each used to derive ``d log m/dt`` again: two derivations of ``m``
    and one of ``s`` per evaluation, a fifth of a D = 2 likelihood solve (benchmarks/results/likelihood.md).
    Now one of each per score evaluation, over a whole solve, and per reverse-SDE drift."""
    sde, dist = CountedPath(), gaussian(dim=2, seed=4)
    score = dist.score_fn(sde)
    x = dist.sample(8, generator=torch.Generator().manual_seed(0), dtype=F64)
    out = log_likelihood(sde, score, x, eps=1e-3, rtol=1e-4, atol=1e-4, time_variable=time_variable)
    assert out.nfe > 10
    assert sde.derivations == {"m": out.nfe, "s": out.nfe}
    sde.derivations = {"m": 0, "s": 0}
    sde.reverse(score).drift(x, 0.5)
    assert sde.derivations == {"m": 1, "s": 1}


def test_the_velocity_conversions_derive_each_rate_once():
    """score <-> velocity (a velocity-predicting network on a user's path) needs the drift and g^2: one
    derivation of m and of s each, not one for the drift and another for the diffusion."""
    sde, dist = CountedPath(), gaussian(dim=2, seed=4)
    x = dist.sample(8, generator=torch.Generator().manual_seed(0), dtype=F64)
    score = dist.score_fn(sde)(x, torch.full((8,), 0.5, dtype=F64))
    velocity = sde.velocity_from_score(x, score, 0.5)
    assert sde.derivations == {"m": 1, "s": 1}
    torch.testing.assert_close(sde.score_from_velocity(x, velocity, 0.5), score, rtol=1e-12, atol=1e-12)
    assert sde.derivations == {"m": 2, "s": 2}
    torch.testing.assert_close(velocity, sde.probability_flow(dist.score_fn(sde)).drift(x, 0.5), rtol=1e-12, atol=1e-12)


def test_a_users_path_trains():
    """Denoising score matching through the Trainer: a small network learns the score of Gaussian
    data well enough that its ODE samples recover the data mean and spread."""
    torch.manual_seed(0)
    sde, dist = ScaledPath(), gaussian(dim=2, seed=2)
    data = dist.sample(4000, generator=torch.Generator().manual_seed(1)).float()
    model = sd.EpsilonParameterization(sd.TimeMLP((2,), hidden_dim=64, n_layers=2), sde)
    options = sd.TrainOptions(steps=1500, batch_size=256, lr=3e-3, warmup_steps=50, progress=False)
    trainer = sd.Trainer(model, sde, data, options, seed=0)
    trainer.fit()
    x_T = sde.prior_sample((4000, 2), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = sd.dpm_solver_pp(sde, trainer.ema_model.eval(), x_T, sd.log_snr_time_grid(sde, 30, 1e-3)).samples
    torch.testing.assert_close(out.mean(0).double(), dist.means[0], atol=0.1, rtol=0)
    torch.testing.assert_close(out.std(0).double(), dist.covs[0].diagonal().sqrt(), atol=0.1, rtol=0.15)


# ------------------------------------------------------------------------------------------ EDM
def test_edm_is_sigma_time_with_the_probability_flow_of_edm_eq_1():
    sde = sd.EDMSDE()
    assert (sde.T, sde.prior_std, sde.sigma_min) == (80.0, 80.0, 0.002)
    t = torch.tensor([0.002, 0.5, 3.0, 80.0], dtype=F64)
    x = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    m, s = sde.kernel(t)
    torch.testing.assert_close(m, torch.ones_like(t))
    torch.testing.assert_close(s, t)
    torch.testing.assert_close(sde.diffusion(t), torch.sqrt(2.0 * t))
    score = lambda x, t: -x / (1.0 + t[:, None] ** 2)  # noqa: E731 (the exact score of N(0, I) data)
    torch.testing.assert_close(sde.probability_flow(score)(t, x), -t[:, None] * score(x, t))  # dx/dt = -t score
    lam = sde.log_snr(t)
    torch.testing.assert_close(sde.time_from_log_snr(lam), t)
    torch.testing.assert_close(sd.GaussianPathSDE.time_from_log_snr(sde, lam[1:3], 1e-4), t[1:3])  # = bisection
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        sd.EDMSDE(sigma_min=1.0, sigma_max=0.5)


def test_edm_heun_on_its_grid_samples_a_mixture_and_the_likelihood_is_exact():
    sde, dist, n = sd.EDMSDE(), mixture(2, seed=3), 6000
    g = torch.Generator().manual_seed(9)
    x_T = sde.prior_sample((n, 2), generator=g, dtype=F64)
    ts = sd.edm_time_grid(sde, 40, sde.sigma_min, dtype=F64)
    assert ts[0] == 80.0 and ts[-1] == pytest.approx(0.002)
    samples = sd.heun(sde, dist.score_fn(sde), x_T, ts).samples
    exact = sde.perturb(dist.sample(n, generator=g, dtype=F64), sde.sigma_min, generator=g)[0]
    for stat in (lambda z: z, lambda z: z**2):
        a, b = stat(samples), stat(exact)
        se = ((a.var(0) + b.var(0)) / n).sqrt()
        assert ((a.mean(0) - b.mean(0)).abs() < 5 * se).all()
    x = dist.sample(8, generator=g, dtype=F64)
    out = log_likelihood(sde, dist.score_fn(sde), x, eps=sde.sigma_min, rtol=1e-8, atol=1e-8)
    exact_terminal = out.logp - sde.prior_logp(out.latent) + dist.log_prob(out.latent, sde.T, sde)
    assert (exact_terminal - dist.log_prob(x, sde.sigma_min, sde)).abs().max() / 2 < 1e-4


# ------------------------------------------------------------------------- flow matching (item 3)
def test_rectified_flow_is_the_linear_path_with_its_singularity_kept_out():
    sde = sd.RectifiedFlow()
    assert sde.T == 0.999 and sde.prior_std == pytest.approx(0.999)
    t = torch.tensor([1e-3, 0.3, 0.7, 0.999], dtype=F64)
    m, s = sde.kernel(t)
    torch.testing.assert_close((m, s), (1 - t, t))
    torch.testing.assert_close(sde.diffusion(t), torch.sqrt(2 * t / (1 - t)))
    x = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sde.drift(x, t), -x / (1 - t[:, None]))
    torch.testing.assert_close(sde.time_from_log_snr(sde.log_snr(t)), t)
    g_T = sde.diffusion(torch.tensor(sde.T, dtype=F64))
    assert torch.isfinite(g_T) and g_T**2 == pytest.approx(2 * 0.999 / 0.001)
    with pytest.raises(ValueError, match="singular at t = 1"):
        sd.RectifiedFlow(t_max=1.0)


@pytest.mark.parametrize("sde", [sd.RectifiedFlow(), sd.VPSDE(), sd.EDMSDE()], ids=["rf", "vp", "edm"])
def test_v_prediction_and_velocity_wrappers_round_trip_to_the_score(sde):
    """A network that outputs the exact v (Salimans & Ho) or the exact probability-flow velocity of
    Gaussian data gives back the exact score through the wrappers."""
    dist = gaussian(dim=3, seed=5)
    score = dist.score_fn(sde)
    g = torch.Generator().manual_seed(1)
    t = sde.T * (0.02 + 0.96 * torch.rand(64, generator=g, dtype=F64))
    x = dist.sample(64, generator=g, dtype=F64) + torch.randn(64, 3, generator=g, dtype=F64)
    m, s = (c[:, None] for c in sde.kernel(t))
    eps = -s * score(x, t)
    x0 = (x - s * eps) / m
    v_salimans = m * eps - s * x0
    velocity = sde.drift(x, t) - 0.5 * sde.diffusion(t)[:, None] ** 2 * score(x, t)
    for wrapper, target in ((sd.VPredictionParameterization, v_salimans), (sd.VelocityParameterization, velocity)):
        model = wrapper(lambda x_, t_, target=target: target, sde)
        torch.testing.assert_close(model(x, t), score(x, t), rtol=1e-9, atol=1e-9)
    # the velocity is the flow-matching field: m' x0 + s' eps with m' = a m, s' = (d s^2/dt) / (2 s)
    a, vr = sde.log_mean_coeff_rate(t)[:, None], sde.variance_rate(t)[:, None]
    torch.testing.assert_close(velocity, a * m * x0 + vr / (2 * s) * eps, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sde", [sd.RectifiedFlow(), sd.VPSDE(), sd.SubVPSDE()], ids=["rf", "vp", "subvp"])
def test_the_flow_matching_loss_equals_dsm_with_its_weighting(sde):
    """|| v_theta(x_t, t) - (m' x0 + s' z) ||^2 computed directly equals denoising_score_matching
    with FlowMatchingWeighting (lambda = g^4 / 4) on the same draws, for a network that is no score."""
    torch.manual_seed(0)
    net = sd.TimeMLP((2,), hidden_dim=16, n_layers=2).double()
    model = sd.VelocityParameterization(net, sde)
    x0 = torch.randn(256, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    eps = 1e-3
    dsm = sd.denoising_score_matching(
        model, sde, x0, weighting=sd.FlowMatchingWeighting(), eps=eps, generator=torch.Generator().manual_seed(3)
    )
    g = torch.Generator().manual_seed(3)  # the same draws, in the loss's order: t, then z
    t = eps + (sde.T - eps) * torch.rand(256, generator=g, dtype=F64)
    z = torch.randn(x0.shape, generator=g, dtype=F64)
    m, s = (c[:, None] for c in sde.kernel(t))
    u = sde.log_mean_coeff_rate(t)[:, None] * m * x0 + sde.variance_rate(t)[:, None] / (2 * s) * z
    cfm = (net(m * x0 + s * z, t) - u).pow(2).sum(1)
    torch.testing.assert_close(dsm, cfm, rtol=1e-8, atol=1e-10)
    weighting = sd.FlowMatchingWeighting()
    torch.testing.assert_close(weighting.weight(sde, t, eps), sde.diffusion(t) ** 4 / 4)


def test_rectified_flow_samples_a_mixture_and_its_likelihood_matches_vps():
    """With the exact mixture score (the oracle works for any kernel): DPM-Solver++ and reverse-SDE
    samples match exact samples of p_eps, and the ODE log-likelihood equals the closed form as VP's does."""
    sde, dist, eps, n = sd.RectifiedFlow(), mixture(2, seed=5), 1e-3, 6000
    g = torch.Generator().manual_seed(11)
    exact = sde.perturb(dist.sample(n, generator=g, dtype=F64), eps, generator=g)[0]
    ode = sd.dpm_solver_pp(
        sde, dist.score_fn(sde), sde.prior_sample((n, 2), generator=g, dtype=F64), sd.log_snr_time_grid(sde, 40, eps, dtype=F64)
    )
    # the reverse SDE from T = 0.999, where g^2 = 1998 is large but finite
    em = sd.euler_maruyama(
        sde,
        dist.score_fn(sde),
        sde.prior_sample((n, 2), generator=g, dtype=F64),
        sd.uniform_time_grid(sde, 1000, eps, dtype=F64),
        generator=g,
    )
    for samples in (ode.samples, em.samples):
        for stat in (lambda z: z, lambda z: z**2):
            a, b = stat(samples), stat(exact)
            assert ((a.mean(0) - b.mean(0)).abs() < 5 * ((a.var(0) + b.var(0)) / n).sqrt()).all()
    x = dist.sample(8, generator=g, dtype=F64)
    for path in (sde, sd.VPSDE()):
        out = log_likelihood(path, dist.score_fn(path), x, eps=eps, rtol=1e-8, atol=1e-8)
        exact_terminal = out.logp - path.prior_logp(out.latent) + dist.log_prob(out.latent, path.T, path)
        assert (exact_terminal - dist.log_prob(x, eps, path)).abs().max() / 2 < 1e-4


@pytest.mark.slow
def test_flow_matching_trains_samples_and_evaluates_in_the_apps(tmp_path):
    import json
    import shutil
    import subprocess

    run = tmp_path / "run"
    args = ["sde=rectified_flow", "loss=flow_matching", "model=mlp_velocity", "sampler=dpm_solver", "sampler.grid.n_steps=10",
            "train.steps=60", "train.warmup_steps=5", "model.net.hidden_dim=32", "model.net.n_layers=2", "data.n_train=2000",
            "data.n_test=200", "n_samples=200", "eval_points=50", "progress=false", f"hydra.run.dir={run}"]  # fmt: skip
    proc = subprocess.run([shutil.which("sde-train"), *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["nfe"] == 10 and math.isfinite(summary["held_out_nll_nats_per_dim"]) and math.isfinite(summary["sliced_w2_vs_held_out"])
    proc = subprocess.run([shutil.which("sde-eval"), f"run_dir={run}", "n_points=50", "progress=false", f"hydra.run.dir={tmp_path / 'eval'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads((run / "eval.json").read_text())[-1]
    assert record["nll_nats_per_dim"] == pytest.approx(summary["held_out_nll_nats_per_dim"], rel=1e-4)
