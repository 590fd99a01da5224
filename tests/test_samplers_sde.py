"""Stochastic samplers against exact answers: predictor-corrector (Euler-Maruyama, reverse diffusion,
ancestral; Langevin and annealed Langevin correctors), Tweedie denoising, and torchsde.

The backbone is an exact oracle: on Gaussian data the score is affine in ``x``, so every predictor's
transition ``N(mu(x), sigma^2 I)`` is affine-Gaussian and the law of the whole discrete chain is a
Gaussian computed exactly by :func:`chain_law`. Samples are tested against that law with whitened
chi-square statistics (pure Monte Carlo error, no discretization slack), and the law itself is
compared with the true marginal to measure the weak error and its order without sampling noise.
"""

from __future__ import annotations

import functools
import math

import analytic
import pytest
import torch
import torchsde
from apps import sampler_section
from hydra.utils import instantiate
from scipy import stats
from tqdm.auto import tqdm

import sde_diffusion as sd
from sde_diffusion import samplers as S
from sde_diffusion.samplers.torchsde_sampler import _SDE_TYPES, _GridIndexReverseSDE
from sde_diffusion.timesteps import uniform_time_grid

F64 = torch.float64
EPS = 1e-3
P_FALSE_ALARM = 1e-6  # per statistic; the seeds are fixed, so this bounds how lucky a pass can be
SDES = {name: sde for name, sde in analytic.all_sdes().items() if name in ("vp", "subvp", "ve", "custom")}
PREDICTORS = {
    "euler_maruyama": S.EulerMaruyamaPredictor(),
    "reverse_diffusion": S.ReverseDiffusionPredictor(),
    "ancestral": S.AncestralPredictor(),
    "ancestral_forward": S.AncestralPredictor(variance="forward"),
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grid(sde: sd.SDE, n_steps: int) -> torch.Tensor:
    return uniform_time_grid(sde, n_steps, EPS, dtype=F64)


def prior(sde: sd.SDE, n: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return sde.prior_sample((n, *shape), generator=gen(seed), dtype=F64)


def prior_law(sde: sd.SDE, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of the prior ``N(0, prior_std^2 I)`` in ``d`` dimensions."""
    return torch.zeros(d, dtype=F64), sde.prior_std**2 * torch.eye(d, dtype=F64)


def marginal_law(dist: sd.GaussianMixture, sde: sd.SDE, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``m mu`` and covariance ``m^2 Sigma + s^2 I`` of ``p_t`` for one-component ``dist``."""
    m, _ = sde.kernel(torch.tensor(t, dtype=F64))
    return m * dist.means[0], analytic.gaussian_marginal_cov(dist, sde, t)


def chain_law(predictor, sde, score_fn, ts, mean, cov, event_shape, last_mean=False):
    """Exact law ``N(mean, cov)`` (``(D,)``, ``(D, D)``) of a predictor chain over ``ts`` started from
    ``N(mean, cov)``, for an affine transition mean (true for Gaussian data, whose score is affine).

    The affine map ``mu(x) = A x + b`` is read off the transition at ``mean`` and ``mean + e_j``; then
    ``mean <- A mean + b`` and ``cov <- A cov A^T + sigma^2 I``. ``last_mean``: the final step keeps
    only its mean (as :func:`euler_maruyama` does).
    """
    d = mean.numel()
    eye = torch.eye(d, dtype=F64)
    for i in range(len(ts) - 1):
        points = (mean + torch.cat([torch.zeros(1, d, dtype=F64), eye])).reshape(d + 1, *event_shape)
        mu, std = predictor.transition(sde, score_fn, points, ts[i], ts[i + 1])
        mu = mu.reshape(d + 1, d)
        a = (mu[1:] - mu[0]).T
        noise = 0.0 if (last_mean and i == len(ts) - 2) else std[0] ** 2
        mean, cov = mu[0], a @ cov @ a.T + noise * eye
    return mean, cov


def gaussian_pvalues(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple[float, float]:
    """p-values that the rows of ``x`` ``(n, *dims)`` are i.i.d. ``N(mean, cov)``.

    With ``y = L^{-1} (x - mean)`` (``cov = L L^T``) the statistic ``n |y_bar|^2`` is chi-square with
    ``D`` degrees of freedom, and ``n (sum_i (S_ii - 1)^2 / 2 + sum_{i<j} S_ij^2)`` for the sample
    covariance ``S`` of ``y`` is asymptotically chi-square with ``D (D + 1) / 2`` (each entry of
    ``S - I`` has variance ``2/n`` on the diagonal and ``1/n`` off it, asymptotically independent).
    """
    n = x.shape[0]
    x = x.reshape(n, -1).to(F64)
    d = x.shape[1]
    chol = torch.linalg.cholesky(cov)
    y = torch.linalg.solve_triangular(chol, (x - mean).T, upper=False).T
    y_bar = y.mean(0)
    dev = (y - y_bar).T @ (y - y_bar) / (n - 1) - torch.eye(d, dtype=F64)
    upper = torch.triu_indices(d, d, 1)
    t_cov = n * (dev.diagonal().pow(2).sum() / 2 + dev[upper[0], upper[1]].pow(2).sum())
    return stats.chi2.sf(n * y_bar.pow(2).sum().item(), d), stats.chi2.sf(t_cov.item(), d * (d + 1) // 2)


def assert_gaussian(x, mean, cov):
    p_mean, p_cov = gaussian_pvalues(x, mean, cov)
    assert p_mean > P_FALSE_ALARM and p_cov > P_FALSE_ALARM, (p_mean, p_cov)


def pc(predictor, corrector=S.NoCorrector(), denoise=False):
    return functools.partial(S.predictor_corrector, predictor=predictor, corrector=corrector, denoise=denoise)


# ----------------------------------------------------------------------- exact law of the chains
@pytest.mark.parametrize("predictor", ["euler_maruyama", "reverse_diffusion", "ancestral"])
@pytest.mark.parametrize("sde_name", list(SDES))
def test_predictor_samples_follow_the_exact_chain_law(sde_name, predictor):
    """10,000 samples of the predictor-only chain (50 steps) against its exact Gaussian law. Only
    Monte Carlo error remains, so the chi-square tests at p = 1e-6 resolve ~8 % in a variance and
    ~0.06 standard deviations in a mean, with no discretization slack: a noise of the wrong scale,
    a skipped step or noise drawn at the wrong place fails."""
    sde, dist, pred = SDES[sde_name], analytic.gaussian(), PREDICTORS[predictor]
    score, ts = dist.score_fn(sde), grid(sde, 50)
    out = pc(pred)(sde, score, prior(sde, 10_000, (2,)), ts, generator=gen(1))
    assert_gaussian(out.samples, *chain_law(pred, sde, score, ts, *prior_law(sde, 2), (2,)))


@pytest.mark.parametrize("sde_name, predictor", [("ve", "ancestral"), ("custom", "reverse_diffusion")])
def test_predictor_samples_follow_the_exact_chain_law_on_images(sde_name, predictor):
    """The same on (B, 1, 8, 8) images: 2,000 samples, D = 64, so the covariance statistic has
    2,080 degrees of freedom."""
    sde, pred = SDES[sde_name], PREDICTORS[predictor]
    dist = analytic.gaussian(dim=64, event_shape=(1, 8, 8))
    score, ts = dist.score_fn(sde), grid(sde, 30)
    out = pc(pred)(sde, score, prior(sde, 2_000, (1, 8, 8)), ts, generator=gen(2))
    assert out.samples.shape == (2_000, 1, 8, 8)
    assert_gaussian(out.samples, *chain_law(pred, sde, score, ts, *prior_law(sde, 64), (1, 8, 8)))


def test_euler_maruyama_follows_its_exact_law():
    """``euler_maruyama`` is the Euler-Maruyama predictor chain whose last step keeps its mean."""
    sde, dist = SDES["vp"], analytic.gaussian()
    score, ts = dist.score_fn(sde), grid(sde, 40)
    out = S.euler_maruyama(sde, score, prior(sde, 10_000, (2,)), ts, generator=gen(3))
    law = chain_law(PREDICTORS["euler_maruyama"], sde, score, ts, *prior_law(sde, 2), (2,), last_mean=True)
    assert_gaussian(out.samples, *law)
    assert out.nfe == 40


@pytest.mark.parametrize("sde_name", list(SDES))
def test_tweedie_denoise_is_the_gaussian_posterior_mean(sde_name):
    """``(x + s^2 score) / m`` equals Bayes' ``E[x0 | x_t] = mu + m Sigma C^{-1} (x - m mu)`` with
    ``C = m^2 Sigma + s^2 I``, to float64 round-off."""
    sde, dist, t = SDES[sde_name], analytic.gaussian(), 0.3
    x = torch.randn(16, 2, generator=gen(4), dtype=F64)
    m_mu, c = marginal_law(dist, sde, t)
    m = sde.kernel(torch.tensor(t, dtype=F64))[0]
    expected = dist.means[0] + (x - m_mu) @ torch.linalg.solve(c, m * dist.covs[0])
    assert torch.allclose(S.tweedie_denoise(sde, dist.score_fn(sde), x, t), expected, atol=1e-12, rtol=1e-10)


def test_predictor_corrector_denoised_samples_follow_the_exact_law():
    """With ``denoise=True`` the output is Tweedie's affine map ``mu + K (x - m mu)`` applied to the
    chain's last state, so its law is ``N(mu + K (mean - m mu), K cov K^T)``; the one extra score
    evaluation shows in the NFE."""
    sde, dist = SDES["subvp"], analytic.gaussian()
    score, ts = dist.score_fn(sde), grid(sde, 40)
    pred = PREDICTORS["reverse_diffusion"]
    out = pc(pred, denoise=True)(sde, score, prior(sde, 10_000, (2,)), ts, generator=gen(5))
    mean, cov = chain_law(pred, sde, score, ts, *prior_law(sde, 2), (2,))
    m_mu, c = marginal_law(dist, sde, EPS)
    k = sde.kernel(torch.tensor(EPS, dtype=F64))[0] * dist.covs[0] @ torch.linalg.inv(c)  # m Sigma C^-1
    assert_gaussian(out.samples, dist.means[0] + k @ (mean - m_mu), k @ cov @ k.T)
    assert out.nfe == 41


@pytest.mark.parametrize("predictor", list(PREDICTORS))
@pytest.mark.parametrize("sde_name", list(SDES))
def test_weak_error_falls_at_the_declared_order(sde_name, predictor):
    """Exact weak error ``|mean - m mu| + |cov - C|_F`` of the chain's law at ``eps``, started from the
    exact ``p_T`` (so only discretization error remains, no Monte Carlo), for N = 128, 256, 512.
    The least-squares slope of log error against log step must reach the declared weak order within
    0.2 (the ancestral steps approach order 1 from below, 0.92-0.97 at these N). Euler-Maruyama on VE
    shows order 2 on Gaussian data, a special cancellation; the declared order is a lower bound."""
    sde, dist, pred = SDES[sde_name], analytic.gaussian(), PREDICTORS[predictor]
    score = dist.score_fn(sde)
    true_mean, true_cov = marginal_law(dist, sde, EPS)
    start = marginal_law(dist, sde, sde.T)
    steps = torch.tensor([128.0, 256.0, 512.0], dtype=F64)
    errors = []
    for n in steps.int().tolist():
        mean, cov = chain_law(pred, sde, score, grid(sde, n), *start, (2,))
        errors.append((mean - true_mean).norm() + (cov - true_cov).norm())
    log_h, log_e = -steps.log(), torch.stack(errors).log()
    slope = ((log_h - log_h.mean()) * (log_e - log_e.mean())).sum() / (log_h - log_h.mean()).pow(2).sum()
    assert slope > pred.order - 0.2, (slope, errors)


# ------------------------------------------------------------------------- the paper's formulas
def test_ancestral_on_ve_is_ncsns_ancestral_step():
    """VE, posterior variance: ``x + (s_i^2 - s_{i-1}^2) score`` and variance
    ``s_{i-1}^2 (s_i^2 - s_{i-1}^2) / s_i^2`` (docs/references.md, with the exact kernel std ``s``), exactly."""
    sde, dist = SDES["ve"], analytic.mixture()
    x = 3.0 * torch.randn(32, 2, generator=gen(6), dtype=F64)
    t, t_next = torch.tensor(0.6, dtype=F64), torch.tensor(0.55, dtype=F64)
    s_i, s_prev = sde.kernel(t)[1], sde.kernel(t_next)[1]
    mean, std = PREDICTORS["ancestral"].transition(sde, dist.score_fn(sde), x, t, t_next)
    assert torch.allclose(mean, x + (s_i**2 - s_prev**2) * dist.score(x, t, sde), rtol=1e-12, atol=1e-12)
    assert torch.allclose(std**2, s_prev**2 * (s_i**2 - s_prev**2) / s_i**2, rtol=1e-12)


@pytest.mark.parametrize("dt", [1e-2, 5e-3])
def test_ancestral_on_vp_is_ddpms_step(dt):
    """VP: with ``beta = 1 - abar_t / abar_{t-dt}`` the step is DDPM's ``(x + beta s) / sqrt(1 - beta)``
    with variance ``beta`` (variance="forward") or ``beta (1 - abar_{t-dt}) / (1 - abar_t)``
    ("posterior"), to round-off. Song et al. write ``beta_i = beta(t) dt``: that differs by
    ``(beta' + beta^2) dt^2 / 2``, checked against the bound ``beta_max^2 dt^2 = 400 dt^2``."""
    sde, dist = SDES["vp"], analytic.mixture()
    x = torch.randn(32, 2, generator=gen(7), dtype=F64)
    t = torch.tensor(0.7, dtype=F64)
    t_next = t - dt
    abar_t, abar_next = sde.kernel(t)[0] ** 2, sde.kernel(t_next)[0] ** 2
    beta = 1 - abar_t / abar_next
    score = dist.score(x, t, sde)
    fwd_mean, fwd_std = PREDICTORS["ancestral_forward"].transition(sde, dist.score_fn(sde), x, t, t_next)
    post_mean, post_std = PREDICTORS["ancestral"].transition(sde, dist.score_fn(sde), x, t, t_next)
    assert torch.allclose(fwd_mean, (x + beta * score) / (1 - beta).sqrt(), rtol=1e-12, atol=1e-12)
    assert torch.allclose(post_mean, fwd_mean, rtol=1e-14, atol=1e-14)
    assert torch.allclose(fwd_std**2, beta.expand(32), rtol=1e-12)
    assert torch.allclose(post_std**2, beta * (1 - abar_next) / (1 - abar_t), rtol=1e-12)
    beta_ref = sde.schedule.beta(t) * dt  # Song et al.'s beta_i
    ddpm = (x + beta_ref * score) / (1 - beta_ref).sqrt()
    assert (fwd_mean - ddpm).abs().max() <= 400 * dt**2 * (x.abs() + score.abs()).max()
    assert (fwd_std**2 - beta_ref).abs().max() <= 400 * dt**2


@pytest.mark.parametrize("sde_name", ["vp", "ve", "custom"])
def test_ancestral_posterior_equals_ddim_with_eta_one(sde_name):
    """Two independent derivations of the same sampler: the kernel posterior here and the DDIM
    sampler with eta = 1 give the same samples from the same generator, to round-off."""
    sde, dist = SDES[sde_name], analytic.mixture()
    score, ts, x = dist.score_fn(sde), grid(sde, 20), prior(sde, 64, (2,))
    ours = pc(PREDICTORS["ancestral"])(sde, score, x, ts, generator=gen(8)).samples
    ddim = S.ddim(sde, score, x, ts, generator=gen(8), eta=1.0).samples
    assert torch.allclose(ours, ddim, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_reverse_diffusion_is_the_sdes_own_chain(sde_name):
    """VP: ``(2 - sqrt(1 - beta_i)) x + beta_i s`` with std ``sqrt(beta_i)``, ``beta_i = beta(t) dt``
    (DDPM); VE: ``x + (s_i^2 - s_{i-1}^2) s`` with std ``sqrt(s_i^2 - s_{i-1}^2)`` (NCSN); SDEs without
    a chain of their own (sub-VP, the custom one) fall back to Euler-Maruyama."""
    sde, dist = SDES[sde_name], analytic.mixture()
    x = torch.randn(32, 2, generator=gen(9), dtype=F64)
    t, dt = torch.tensor(0.4, dtype=F64), 0.01
    score = dist.score(x, t, sde)
    mean, std = PREDICTORS["reverse_diffusion"].transition(sde, dist.score_fn(sde), x, t, t - dt)
    if sde_name == "vp":
        beta = sde.schedule.beta(t) * dt
        expected = ((2 - (1 - beta).sqrt()) * x + beta * score, beta.sqrt())
    elif sde_name == "ve":
        jump = sde.kernel(t)[1] ** 2 - sde.kernel(t - dt)[1] ** 2
        expected = (x + jump * score, jump.sqrt())
    else:
        expected = PREDICTORS["euler_maruyama"].transition(sde, dist.score_fn(sde), x, t, t - dt)
    assert torch.allclose(mean, expected[0], rtol=1e-12, atol=1e-12)
    assert torch.allclose(std, expected[1].expand(32), rtol=1e-12)


# ------------------------------------------------------------------------------------ correctors
@pytest.mark.parametrize("norm", ["sample", "batch"])
def test_langevin_update_rule(norm):
    """Replaying the generator: ``x + eps s + sqrt(2 eps) z`` with ``eps = 2 alpha (r |z| / |s|)^2``,
    ``alpha = 1`` on VE, norms per sample over all of an image's dimensions or their batch means."""
    sde, dist = SDES["ve"], analytic.gaussian(dim=64, event_shape=(1, 8, 8))
    x = torch.randn(8, 1, 8, 8, generator=gen(10), dtype=F64)
    t, t_prev = torch.tensor(0.3, dtype=F64), torch.tensor(0.31, dtype=F64)
    out, out_mean = S.LangevinCorrector(snr=0.2, norm=norm).step(sde, dist.score_fn(sde), x, t, t_prev, gen(11))
    z = torch.randn(x.shape, generator=gen(11), dtype=F64)
    s = dist.score(x, t, sde)
    z_norm, s_norm = z.flatten(1).norm(dim=1), s.flatten(1).norm(dim=1)
    if norm == "batch":
        z_norm, s_norm = z_norm.mean(), s_norm.mean()
    eps = (2 * (0.2 * z_norm / s_norm) ** 2).expand(8).reshape(8, 1, 1, 1)
    assert torch.allclose(out_mean, x + eps * s, rtol=1e-12, atol=1e-12)
    assert torch.allclose(out, x + eps * s + (2 * eps).sqrt() * z, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dt", [1e-2, 5e-3])
def test_langevin_alpha_is_one_minus_beta_for_vp(dt):
    """``alpha = (m(t_prev) / m(t))^2`` equals ``1 - beta(t_prev) dt`` (the paper's ``alpha_i``) up to
    ``(beta^2 + beta') dt^2 / 2 <= beta_max^2 dt^2``; on VE it is exactly 1."""
    s = torch.ones(4, 2, dtype=F64)
    z = torch.ones(4, 2, dtype=F64)
    corrector = S.LangevinCorrector(snr=0.5)
    t_prev = torch.full((4,), 0.8, dtype=F64)
    alpha_vp = corrector.epsilon(SDES["vp"], s, z, t_prev - dt, t_prev) / (2 * 0.5**2)
    alpha_ve = corrector.epsilon(SDES["ve"], s, z, t_prev - dt, t_prev) / (2 * 0.5**2)
    assert ((alpha_vp - (1 - SDES["vp"].schedule.beta(t_prev) * dt)).abs() <= 400 * dt**2).all()
    assert torch.allclose(alpha_ve, torch.ones(4, dtype=F64), rtol=1e-14)


CORRECTOR_CASES = {  # corrector, SDE, t, shape, n, initial mean shift, initial covariance factor
    "langevin_batch_2d": (S.LangevinCorrector(snr=0.16, n_steps=200, norm="batch"), "vp", 0.3, (2,), 4_000, 1.0, 3.0),
    "langevin_batch_images": (S.LangevinCorrector(snr=0.1, n_steps=400, norm="batch"), "vp", 0.3, (1, 8, 8), 500, 0.3, 1.5),
    "annealed_vp_2d": (S.AnnealedLangevinCorrector(step_size=0.1, n_steps=200), "vp", 0.3, (2,), 4_000, 1.0, 3.0),
    "annealed_ve_2d": (S.AnnealedLangevinCorrector(step_size=0.1, n_steps=200), "ve", 0.6, (2,), 4_000, 1.0, 3.0),
}


@pytest.mark.parametrize("case", list(CORRECTOR_CASES))
def test_corrector_pulls_samples_to_the_marginal(case):
    """Started far from ``p_t`` (mean shifted, covariance inflated: rejected at p << 1e-6), the
    corrector alone must bring the samples to ``p_t``.

    Langevin with step ``eps`` on a Gaussian contracts the error by ``1 - eps / lambda_max`` a step,
    and the step counts leave < 5 % of the initial error, below the tests' resolution. The
    unadjusted chain's stationary covariance ``lambda / (1 - eps / (2 lambda))`` exceeds the target by
    about ``r^2 kappa``: ~3 % at r = 0.16 in 2-D and for the annealed steps (~4 %), below the ~12 %
    a 2-D variance test resolves with 4,000 samples; ~1 % at r = 0.1 on images, below the ~3 % the
    2,080-degree-of-freedom test resolves with 500 samples. Batch-mean norms throughout: per-sample
    norms change the target (see the next test)."""
    corrector, sde_name, t, shape, n, shift, scale = CORRECTOR_CASES[case]
    sde = SDES[sde_name]
    d = math.prod(shape)
    dist = analytic.gaussian(dim=d, event_shape=shape)
    mean, cov = marginal_law(dist, sde, t)
    z = torch.randn(n, d, generator=gen(12), dtype=F64)
    x = (mean + shift + math.sqrt(scale) * z @ torch.linalg.cholesky(cov).T).reshape(n, *shape)
    assert max(gaussian_pvalues(x, mean, cov)) < P_FALSE_ALARM
    t = torch.tensor(t, dtype=F64)
    x, _ = corrector.step(sde, dist.score_fn(sde), x, t, t + 0.01, gen(13))
    assert_gaussian(x, mean, cov)


def test_per_sample_norms_tilt_the_langevin_target():
    """Per-sample norms make the step depend on the state, ``eps(x) ~ |z|^2 / |s(x)|^2``, and reuse
    ``z``: in the small-step limit the chain is a time change of Langevin dynamics with invariant
    density ``p^(d / (d + 2)) |s|^2``, not ``p`` (the reused noise has covariance ``(d + 2) / d``
    times the drift's). On a Gaussian the whitened covariance becomes ``(1 + 2/d) (I + 2 M / tr M)``,
    whose mean diagonal is ``(1 + 2/d)^2`` = 1.27 for d = 16, whatever the snr; batch-mean norms give
    1 up to the unadjusted-Langevin bias ``~ r^2 kappa`` (~1.5 % at r = 0.1, allowed as 0.02). The
    mean whitened variance has standard error ~ ``sqrt(2 / (n d))``; we allow 5 of them."""
    sde, t, d, n = SDES["vp"], 0.3, 16, 2_000
    dist = analytic.gaussian(dim=d)
    mean, cov = marginal_law(dist, sde, t)
    chol = torch.linalg.cholesky(cov)
    start = mean + torch.randn(n, d, generator=gen(26), dtype=F64) @ chol.T
    t = torch.tensor(t, dtype=F64)
    for norm, expected in [("sample", (1 + 2 / d) ** 2), ("batch", 1.0)]:
        corrector = S.LangevinCorrector(snr=0.1, n_steps=300, norm=norm)
        x, _ = corrector.step(sde, dist.score_fn(sde), start, t, t + 0.01, gen(27))
        y = torch.linalg.solve_triangular(chol, (x - mean).T, upper=False).T
        variance = torch.cov(y.T).diagonal().mean().item()
        assert abs(variance - expected) < 5 * math.sqrt(2 / (n * d)) + 0.02, (norm, variance, expected)


# ------------------------------------------------------------------------- mixtures end to end
def sliced_w1(x: torch.Tensor, y: torch.Tensor, n_proj: int = 64) -> float:
    """Sliced 1-Wasserstein distance between two equal-size samples over fixed random directions."""
    x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
    dirs = torch.randn(x.shape[1], n_proj, generator=gen(99), dtype=F64)
    dirs = dirs / dirs.norm(dim=0)
    return ((x @ dirs).sort(0)[0] - (y @ dirs).sort(0)[0]).abs().mean().item()


@functools.cache
def sliced_w1_floor(shape: tuple[int, ...], n: int) -> tuple[float, float]:
    """Mean and std of the sliced W1 between two independent exact sample sets of size ``n`` (16 pairs)."""
    dist = analytic.mixture(dim=math.prod(shape), event_shape=shape)
    draws = [sliced_w1(dist.sample(n, generator=gen(1000 + k), dtype=F64),
                       dist.sample(n, generator=gen(2000 + k), dtype=F64)) for k in range(16)]
    draws = torch.tensor(draws)
    return draws.mean().item(), draws.std().item()


MIXTURE_CASES = {
    "vp_pc": ("vp", pc(S.ReverseDiffusionPredictor(), S.LangevinCorrector(0.16, norm="batch"), True), 200, (2,), 4_000),
    "subvp_em": ("subvp", S.euler_maruyama, 200, (2,), 4_000),
    "ve_ancestral": ("ve", pc(S.AncestralPredictor(), denoise=True), 200, (2,), 4_000),
    "ve_ncsn": ("ve", pc(S.NoPredictor(), S.AnnealedLangevinCorrector(0.2, n_steps=3), True), 100, (2,), 4_000),
    "custom_pc": ("custom", pc(S.EulerMaruyamaPredictor(), S.LangevinCorrector(0.1, norm="batch"), True), 200, (2,), 4_000),
    "vp_torchsde_srk": ("vp", functools.partial(S.torchsde_sampler, method="srk"), 100, (2,), 4_000),
    "vp_ancestral_images": ("vp", pc(S.AncestralPredictor(), denoise=True), 100, (1, 8, 8), 500),
    "ve_pc_images": ("ve", pc(S.ReverseDiffusionPredictor(), S.LangevinCorrector(0.16), True), 100, (1, 8, 8), 500),
}


@pytest.mark.parametrize("case", list(MIXTURE_CASES))
def test_mixture_weights_and_sliced_wasserstein(case):
    """On a 4-component mixture with the exact score: the mean posterior responsibility of each
    component equals its weight exactly under ``p_0`` and has variance <= ``w (1 - w) / n``, so we
    allow 5 binomial standard errors (``p_eps`` differs from ``p_0`` by ``s(eps)^2 <= 1e-4`` in
    variance, far below that); and the sliced W1 to fresh exact samples must be within 5 standard
    deviations of the floor measured between two exact sample sets of the same size."""
    sde_name, sampler, n_steps, shape, n = MIXTURE_CASES[case]
    sde = SDES[sde_name]
    dist = analytic.mixture(dim=math.prod(shape), event_shape=shape)
    out = sampler(sde, dist.score_fn(sde), prior(sde, n, shape), grid(sde, n_steps), generator=gen(14))
    weights = dist.responsibilities(out.samples).mean(0)
    assert ((weights - dist.weights).abs() <= 5 * (dist.weights * (1 - dist.weights) / n).sqrt()).all()
    floor_mean, floor_std = sliced_w1_floor(shape, n)
    distance = sliced_w1(out.samples, dist.sample(n, generator=gen(15), dtype=F64))
    assert distance < floor_mean + 5 * floor_std, (distance, floor_mean, floor_std)


# --------------------------------------------------------------------------------------- torchsde
def quadratic_grid(sde: sd.SDE, n_steps: int) -> torch.Tensor:
    """A non-uniform grid, dense near ``eps``: ``t_i = eps + (T - eps) (1 - i / N)^2``."""
    u = torch.linspace(0.0, 1.0, n_steps + 1, dtype=F64)
    return EPS + (sde.T - EPS) * (1 - u) ** 2


@pytest.mark.parametrize("sde_name, shape, make_grid", [
    ("vp", (2,), grid),
    ("ve", (2,), quadratic_grid),
    ("custom", (1, 8, 8), grid),
])
def test_torchsde_euler_follows_the_euler_maruyama_law(sde_name, shape, make_grid):
    """torchsde's Euler steps once per grid interval in grid-index time, so on any grid (uniform or
    not) its samples follow the exact law of the native Euler-Maruyama predictor chain."""
    sde = SDES[sde_name]
    d = math.prod(shape)
    dist = analytic.gaussian(dim=d, event_shape=shape)
    score, ts = dist.score_fn(sde), make_grid(sde, 40)
    n = 10_000 if d == 2 else 2_000
    out = S.torchsde_sampler(sde, score, prior(sde, n, shape), ts, generator=gen(16), method="euler")
    assert out.samples.shape == (n, *shape) and out.nfe == 40
    assert_gaussian(out.samples, *chain_law(PREDICTORS["euler_maruyama"], sde, score, ts, *prior_law(sde, d), shape))


def test_torchsde_milstein_equals_euler():
    """For state-independent noise Milstein's correction vanishes: same Brownian path, same samples."""
    sde, dist = SDES["vp"], analytic.mixture()
    x, ts = prior(sde, 64, (2,)), grid(sde, 20)
    euler = S.torchsde_sampler(sde, dist.score_fn(sde), x, ts, generator=gen(17), method="euler")
    milstein = S.torchsde_sampler(sde, dist.score_fn(sde), x, ts, generator=gen(17), method="milstein")
    assert torch.allclose(euler.samples, milstein.samples, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["srk", "reversible_heun"])
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_torchsde_higher_order_methods_match_the_marginal(sde_name, method):
    """srk and reversible Heun at 100 steps against the true ``p_eps`` (no exact chain law exists for
    them here): their bias at this step count (< 2 % on the covariance, measured with 20,000 samples)
    is far below what the test resolves with 4,000 samples (~12 %)."""
    sde, dist = SDES[sde_name], analytic.gaussian()
    out = S.torchsde_sampler(sde, dist.score_fn(sde), prior(sde, 4_000, (2,)), grid(sde, 100),
                             generator=gen(18), method=method)
    assert_gaussian(out.samples, *marginal_law(dist, sde, EPS))


@functools.cache
def strong_solution(method: str, substeps: int) -> torch.Tensor:
    """The VP reverse SDE (Gaussian data, 64 paths, 8 grid intervals) on one fixed Brownian path: a
    BrownianInterval with ``halfway_tree`` samples the same path whatever the query points, and
    torchsde takes ``substeps`` steps per grid interval through the grid-index adapter."""
    sde, dist = SDES["vp"], analytic.gaussian()
    x = prior(sde, 64, (2,))
    bm = torchsde.BrownianInterval(t0=0.0, t1=8.0, size=x.shape, dtype=F64, entropy=19, tol=1e-6,
                                   halfway_tree=True, levy_area_approximation="space-time")
    sde_in_tau = _GridIndexReverseSDE(sde, dist.score_fn(sde), grid(sde, 8), x.shape, _SDE_TYPES[method],
                                      tqdm(disable=True))
    taus = torch.tensor([0.0, 8.0], dtype=F64)
    return torchsde.sdeint(sde_in_tau, x, taus, bm=bm, method=method, dt=1.0 / substeps)[-1]


@pytest.mark.parametrize("method", ["euler", "srk", "reversible_heun"])
def test_torchsde_strong_order(method):
    """Strong order through the grid-index adapter: k = 4, 8, 16 steps per grid interval against srk
    with k = 64 on the same Brownian path. The slope of the log mean pathwise error must reach the
    declared strong order within 0.2 (measured: euler 1.0, srk 1.8, reversible Heun 2.5; the latter
    two exceed their guarantee on this linear problem)."""
    ks = torch.tensor([4.0, 8.0, 16.0], dtype=F64)
    reference = strong_solution("srk", 64)
    errors = torch.stack([(strong_solution(method, int(k)) - reference).norm(dim=1).mean() for k in ks])
    log_k, log_e = ks.log() - ks.log().mean(), errors.log() - errors.log().mean()
    slope = -(log_k * log_e).sum() / log_k.pow(2).sum()
    assert slope > S.torchsde_sampler.method_orders[method] - 0.2, (slope, errors)


# ----------------------------------------------------------------- NFE, shapes, seeds, progress
def counted(score_fn):
    """An independent count of score calls, to check the samplers' own NFE."""
    def score(x, t):
        score.calls += 1
        return score_fn(x, t)
    score.calls = 0
    return score


SAMPLERS = {  # sampler, NFE for N steps
    "euler_maruyama": (S.euler_maruyama, lambda n: n),
    "pc_rd_langevin": (pc(S.ReverseDiffusionPredictor(), S.LangevinCorrector(n_steps=2), True), lambda n: 3 * n + 1),
    "pc_ancestral": (pc(S.AncestralPredictor()), lambda n: n),
    "pc_em_annealed": (pc(S.EulerMaruyamaPredictor(), S.AnnealedLangevinCorrector(n_steps=1), False), lambda n: 2 * n),
    "ncsn": (pc(S.NoPredictor(), S.AnnealedLangevinCorrector(n_steps=3), True), lambda n: 3 * n + 1),
    **{f"torchsde_{m}": (functools.partial(S.torchsde_sampler, method=m), nfe) for m, nfe in [
        ("euler", lambda n: n), ("milstein", lambda n: n), ("srk", lambda n: 4 * n),
        ("reversible_heun", lambda n: n + 1)]},
}


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_shapes_and_exact_nfe(name, shape):
    """Every sampler keeps ``(B, *dims)`` and reports exactly the score calls it made, N (M + 1) (+1)."""
    sampler, nfe = SAMPLERS[name]
    sde = SDES["ve"]
    dist = analytic.mixture(dim=math.prod(shape), event_shape=shape)
    score = counted(dist.score_fn(sde))
    out = sampler(sde, score, prior(sde, 6, shape), grid(sde, 7), generator=gen(20))
    assert out.samples.shape == (6, *shape) and torch.isfinite(out.samples).all()
    assert out.nfe == score.calls == nfe(7)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_same_seed_same_samples(name):
    """A generator seeded alike reproduces the samples bit for bit; another seed changes them."""
    sampler, _ = SAMPLERS[name]
    sde, dist = SDES["custom"], analytic.mixture()
    x, ts = prior(sde, 16, (2,)), grid(sde, 10)
    runs = [sampler(sde, dist.score_fn(sde), x, ts, generator=gen(seed)).samples for seed in (21, 21, 22)]
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], runs[2])


@pytest.mark.parametrize("name", ["euler_maruyama", "pc_rd_langevin", "torchsde_srk"])
def test_progress_bar(name, capsys):
    sampler, _ = SAMPLERS[name]
    sde, dist = SDES["vp"], analytic.mixture()
    out = sampler(sde, dist.score_fn(sde), prior(sde, 4, (2,)), grid(sde, 50), generator=gen(23), progress=True)
    assert torch.isfinite(out.samples).all()
    assert "/50 [" in capsys.readouterr().err  # the bar was drawn, with the step count as its total


# --------------------------------------------------------------------------------- validation
class OrnsteinUhlenbeck(sd.SDE):
    """A user SDE without a closed-form kernel: ``dx = -x dt + sqrt(2) dw``."""

    prior_std = 1.0

    def drift(self, x, t):
        return -x

    def diffusion(self, t):
        return torch.full_like(torch.as_tensor(t), math.sqrt(2.0))


def test_sde_without_kernel():
    """The generic samplers run on an SDE with no kernel (the OU process with N(0, I) data has the
    score -x at every time, so samples stay N(0, I)); kernel-based policies are rejected up front."""
    sde = OrnsteinUhlenbeck()

    def score(x, t):
        return -x

    x, ts = prior(sde, 4_000, (2,)), grid(sde, 50)
    for sampler in (S.euler_maruyama, pc(S.ReverseDiffusionPredictor()), functools.partial(S.torchsde_sampler, method="srk")):
        assert_gaussian(sampler(sde, score, x, ts, generator=gen(24)).samples, torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    for bad in (pc(S.AncestralPredictor()), pc(S.EulerMaruyamaPredictor(), S.LangevinCorrector()),
                pc(S.EulerMaruyamaPredictor(), denoise=True)):
        with pytest.raises(ValueError, match="kernel"):
            bad(sde, score, x, ts)


def test_invalid_arguments_are_rejected():
    sde, dist = SDES["vp"], analytic.mixture()
    x, ts = prior(sde, 4, (2,)), grid(sde, 5)
    with pytest.raises(ValueError, match="variance"):
        S.AncestralPredictor(variance="beta")
    with pytest.raises(ValueError, match="snr"):
        S.LangevinCorrector(snr=0.0)
    with pytest.raises(ValueError, match="n_steps"):
        S.LangevinCorrector(n_steps=0)
    with pytest.raises(ValueError, match="norm"):
        S.LangevinCorrector(norm="mean")
    with pytest.raises(ValueError, match="step_size"):
        S.AnnealedLangevinCorrector(step_size=-1.0)
    with pytest.raises(TypeError, match=r"ReverseDiffusionPredictor\(\)"):
        S.predictor_corrector(sde, dist.score_fn(sde), x, ts, predictor=S.ReverseDiffusionPredictor,
                              corrector=S.NoCorrector())
    with pytest.raises(ValueError, match="does nothing"):
        pc(S.NoPredictor())(sde, dist.score_fn(sde), x, ts)
    with pytest.raises(ValueError, match="method"):
        S.torchsde_sampler(sde, dist.score_fn(sde), x, ts, method="heun")
    with pytest.raises(ValueError, match="decrease"):
        S.euler_maruyama(sde, dist.score_fn(sde), x, ts.flip(0))


# ------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", ["pc", "reverse_diffusion", "ancestral", "langevin", "annealed_langevin",
                                  "torchsde", "euler_maruyama"])
def test_config_instantiates_and_samples(name):
    """Each conf/sampler YAML builds its sampler and grid as the app does and samples (grid shortened)."""
    cfg = sampler_section(name)
    fn = instantiate(cfg.fn)
    sde, dist = SDES["ve"], analytic.mixture()
    ts = instantiate(cfg.grid, n_steps=6)(sde, device="cpu", dtype=F64)
    assert ts[0] == sde.T and ts[-1] == pytest.approx(cfg.grid.eps)
    out = fn(sde, dist.score_fn(sde), prior(sde, 8, (2,)), ts, generator=gen(25))
    assert out.samples.shape == (8, 2) and torch.isfinite(out.samples).all() and out.nfe >= 6
