"""Score-matching losses against closed forms on Gaussian and Gaussian-mixture data."""

from __future__ import annotations

import math

import pytest
import scipy.integrate
import scipy.stats
import torch

import sde_diffusion as sd
from analytic import KernelFreeVP, all_sdes, core_sdes, gaussian, gaussian_marginal_cov, mixture

EPS = 1e-5


class FixedTime:
    """A user-written weighting (duck-typed like the library's): every sample at time ``t``, lambda = s^2."""

    needs_kernel = True

    def __init__(self, t: float):
        self.t = t

    def sample_time(self, sde, batch, eps, *, generator=None, device=None, dtype=None):
        return torch.full((batch,), self.t, device=device, dtype=dtype)

    def weight(self, sde, t, eps):
        return sde.kernel(t)[1] ** 2


def _mean_and_se(v: torch.Tensor) -> tuple[float, float]:
    return v.mean().item(), v.std().item() / math.sqrt(v.numel())


def _fisher_gap(dist, sde, t: float) -> float:
    """For Gaussian data: E || grad log p_0t(x_t|x_0) ||^2 - E || grad log p_t ||^2 = D/s^2 - tr(C^-1)."""
    _, s = sde.kernel(torch.tensor(t, dtype=torch.float64))
    cov = gaussian_marginal_cov(dist, sde, t)
    return dist.dim / s.item() ** 2 - torch.linalg.inv(cov).trace().item()


@pytest.mark.parametrize("name", list(core_sdes()))
@pytest.mark.parametrize("t", [0.05, 0.5])
def test_dsm_at_the_exact_score_equals_the_fisher_gap(name, t):
    """At the exact score, E[s^2 || s_exact + z/s ||^2] = s^2 (D/s^2 - tr C^-1) (Vincent 2011),
    checked to 5 standard errors of the Monte Carlo mean."""
    sde = core_sdes()[name]
    dist = gaussian(dim=3, seed=1)
    x0 = dist.sample(100_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss = sd.denoising_score_matching(
        dist.score_fn(sde), sde, x0, weighting=FixedTime(t), generator=torch.Generator().manual_seed(1)
    )
    mean, se = _mean_and_se(loss)
    s2 = sde.kernel(torch.tensor(t, dtype=torch.float64))[1].item() ** 2
    assert abs(mean - s2 * _fisher_gap(dist, sde, t)) < 5 * se


@pytest.mark.parametrize("name", list(core_sdes()))
def test_dsm_expectation_over_time_matches_quadrature(name):
    """E_t~U(eps,1) of the eps-weighted loss at the exact score equals the integral of its closed form."""
    sde = core_sdes()[name]
    dist = gaussian(dim=2, seed=2)
    x0 = dist.sample(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss = sd.denoising_score_matching(dist.score_fn(sde), sde, x0, generator=torch.Generator().manual_seed(1))
    mean, se = _mean_and_se(loss)
    integrand = lambda t: sde.kernel(torch.tensor(t, dtype=torch.float64))[1].item() ** 2 * _fisher_gap(dist, sde, t)  # noqa: E731
    exact = scipy.integrate.quad(integrand, EPS, 1.0, limit=200)[0] / (1.0 - EPS)
    assert abs(mean - exact) < 5 * se


@pytest.mark.parametrize("name", list(core_sdes()))
def test_importance_sampled_likelihood_weighting_is_unbiased(name):
    """With t ~ p(t) ∝ g^2/s^2 and weight Z s^2/(T - eps), the loss has the expectation of the
    likelihood-weighted loss, (1/(T-eps)) int g^2 (D/s^2 - tr C^-1) dt, with bounded variance."""
    sde = core_sdes()[name]
    dist = gaussian(dim=2, seed=3)
    x0 = dist.sample(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss = sd.denoising_score_matching(
        dist.score_fn(sde), sde, x0, weighting=sd.ImportanceLikelihoodWeighting(), generator=torch.Generator().manual_seed(1)
    )
    mean, se = _mean_and_se(loss)

    def integrand(log_t):  # substitute t = e^u: g^2/s^2 ~ 1/t near 0 becomes smooth
        t = math.exp(log_t)
        g2 = sde.diffusion(torch.tensor(t, dtype=torch.float64)).item() ** 2
        return t * g2 * _fisher_gap(dist, sde, t)

    exact = scipy.integrate.quad(integrand, math.log(EPS), 0.0, limit=200)[0] / (1.0 - EPS)
    assert abs(mean - exact) < 5 * se
    assert se / mean < 0.01  # the point of importance sampling: a tight estimate from 2e5 samples


@pytest.mark.parametrize("name", list(all_sdes()))
def test_importance_times_follow_g2_over_s2(name):
    """Kolmogorov-Smirnov against the CDF F(t) = (logSNR(eps) - logSNR(t)) / Z; works for any kernel SDE."""
    sde = all_sdes()[name]
    w = sd.ImportanceLikelihoodWeighting()
    t = w.sample_time(sde, 20_000, EPS, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lam_eps, lam_T = sde.log_snr(torch.tensor([EPS, sde.T], dtype=torch.float64)).tolist()

    def cdf(u):
        return ((lam_eps - sde.log_snr(torch.as_tensor(u, dtype=torch.float64))) / (lam_eps - lam_T)).numpy()

    assert scipy.stats.kstest(t.numpy(), cdf).pvalue > 1e-3


@pytest.mark.parametrize("weighting", [sd.NoiseWeighting(), sd.LikelihoodWeighting(), sd.ImportanceLikelihoodWeighting()], ids=repr)
@pytest.mark.parametrize("name", list(core_sdes()))
def test_dsm_penalises_a_perturbed_score_by_exactly_lambda_delta2(name, weighting):
    """With common random numbers, loss(s_exact + delta) - loss(s_exact) has expectation
    E[lambda(t)] ||delta||^2 (the cross term vanishes in expectation): the exact score is the
    minimiser and the loss measures the squared error of any other."""
    sde = core_sdes()[name]
    dist = mixture(dim=2, n_components=3, seed=4)
    x0 = dist.sample(50_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    delta = torch.tensor([0.3, -0.2], dtype=torch.float64)
    exact = dist.score_fn(sde)

    def run(score_fn):
        return sd.denoising_score_matching(score_fn, sde, x0, weighting=weighting, generator=torch.Generator().manual_seed(1))

    base = run(exact)
    perturbed = run(lambda x, t: exact(x, t) + delta)
    gen = torch.Generator().manual_seed(1)
    t = weighting.sample_time(sde, x0.shape[0], EPS, generator=gen, dtype=torch.float64)
    expected = (weighting.weight(sde, t, EPS) * delta.pow(2).sum()).mean().item()
    diff_mean, diff_se = _mean_and_se(perturbed - base)
    assert perturbed.mean() > base.mean()
    assert abs(diff_mean - expected) < 5 * diff_se


@pytest.mark.parametrize("t", [0.1, 0.6])
@pytest.mark.parametrize("projection", ["rademacher", "gaussian"])
def test_sliced_score_matching_at_the_exact_score(t, projection):
    """E[v^T grad(v^T s) + 1/2 ||s||^2] at the exact Gaussian score is -1/2 tr(C^-1) (times lambda = s^2)."""
    sde = sd.VPSDE()
    dist = gaussian(dim=3, seed=5)
    x0 = dist.sample(50_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss = sd.sliced_score_matching(
        dist.score_fn(sde), sde, x0, weighting=FixedTime(t), projection=projection, generator=torch.Generator().manual_seed(1)
    )
    mean, se = _mean_and_se(loss)
    s2 = sde.kernel(torch.tensor(t, dtype=torch.float64))[1].item() ** 2
    exact = -0.5 * s2 * torch.linalg.inv(gaussian_marginal_cov(dist, sde, t)).trace().item()
    assert abs(mean - exact) < 5 * se


class _TimeOnly:
    """Weighting with lambda = 1 at a fixed time: needs no kernel."""

    needs_kernel = False

    def __init__(self, t):
        self.t = t

    def sample_time(self, sde, batch, eps, *, generator=None, device=None, dtype=None):
        return torch.full((batch,), self.t, device=device, dtype=dtype)

    def weight(self, sde, t, eps):
        return torch.ones_like(t)


def test_sliced_score_matching_works_without_a_kernel():
    """An SDE with no closed-form kernel: x_t is simulated; the loss still has its analytic expectation
    (up to the Euler-Maruyama bias of 200 steps, well inside the statistical tolerance) and ranks the
    exact score below a perturbed one."""
    sde = KernelFreeVP()
    dist = gaussian(dim=2, seed=6)
    t = 0.3
    x0 = dist.sample(20_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact_score = dist.score_fn(sd.VPSDE())

    def run(score_fn):
        return sd.sliced_score_matching(
            score_fn, sde, x0, weighting=_TimeOnly(t), simulation_steps=200, generator=torch.Generator().manual_seed(1)
        )

    base = run(exact_score)
    mean, se = _mean_and_se(base)
    exact = -0.5 * torch.linalg.inv(gaussian_marginal_cov(dist, sd.VPSDE(), t)).trace().item()
    assert abs(mean - exact) < 5 * se + 0.01 * abs(exact)
    perturbed = run(lambda x, tt: exact_score(x, tt) * 1.3)
    assert perturbed.mean() > base.mean() + 5 * se
    with pytest.raises(ValueError, match="sliced_score_matching"):
        sd.denoising_score_matching(exact_score, sde, x0)


@pytest.mark.parametrize("shape", [(7, 2), (7, 1, 8, 8)])
@pytest.mark.parametrize("loss_fn", [sd.denoising_score_matching, sd.sliced_score_matching], ids=lambda f: f.__name__)
@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_losses_return_per_sample_values_and_gradients(shape, loss_fn, reduce):
    sde = sd.SubVPSDE()
    net = sd.TimeMLP(shape[1:], hidden_dim=16, n_layers=2)
    torch.nn.init.normal_(net.out.weight, std=0.1)
    model = sd.EpsilonParameterization(net, sde)
    x0 = torch.randn(shape)
    loss = loss_fn(model, sde, x0, reduce=reduce, generator=torch.Generator().manual_seed(0))
    assert loss.shape == (shape[0],) and loss.dtype == torch.float32 and torch.isfinite(loss).all()
    loss.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_reduce_mean_divides_the_sum_by_the_dimension():
    sde, x0 = sd.VPSDE(), torch.randn(5, 1, 4, 4, dtype=torch.float64)
    score = lambda x, t: -x  # noqa: E731
    a = sd.denoising_score_matching(score, sde, x0, reduce="sum", generator=torch.Generator().manual_seed(0))
    b = sd.denoising_score_matching(score, sde, x0, reduce="mean", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a / 16, b)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"eps": 0.0}, "eps must lie in"), ({"eps": 1.5}, "eps must lie in"), ({"reduce": "max"}, "reduce must be one of")],
)
def test_bad_loss_options_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sd.denoising_score_matching(lambda x, t: x, sd.VPSDE(), torch.randn(3, 2), **kwargs)


@pytest.mark.parametrize("name", list(all_sdes()))
@pytest.mark.parametrize("weighting", [sd.NoiseWeighting(), sd.ImportanceLikelihoodWeighting()], ids=repr)
def test_weight_over_variance_is_lambda_over_s2(name, weighting):
    """The shortcut the DSM loss takes must be the ratio it replaces, and the loss with the shortcut
    equals the loss computed from ``weight`` (a duck-typed weighting without the shortcut)."""
    sde = all_sdes()[name]
    t = torch.linspace(1e-3, 1.0, 50, dtype=torch.float64)
    ratio = torch.as_tensor(weighting.weight_over_variance(sde, t, EPS), dtype=torch.float64)
    torch.testing.assert_close(ratio.expand(50), weighting.weight(sde, t, EPS) / sde.kernel(t)[1] ** 2, rtol=1e-10, atol=0)

    class WeightOnly:  # the same weighting without weight_over_variance: DSM divides by s^2 itself
        needs_kernel = True
        sample_time = weighting.sample_time
        weight = weighting.weight

    dist = gaussian(dim=2, seed=1)
    x0 = dist.sample(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    losses = [sd.denoising_score_matching(dist.score_fn(sde), sde, x0, weighting=w, generator=torch.Generator().manual_seed(1))
              for w in (weighting, WeightOnly())]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-9, atol=0)
