"""Forward SDEs against analytic truth: kernels vs simulation, kernel vs drift/diffusion,
discretizations vs DDPM/NCSN, priors, schedules."""

from __future__ import annotations

import math

import pytest
import torch

import sde_diffusion as sd
from analytic import KernelFreeVP, all_sdes

SDES = all_sdes()


@pytest.mark.parametrize("name", [n if n == "vp" else pytest.param(n, marks=pytest.mark.slow) for n in SDES])
def test_kernel_matches_euler_maruyama_simulation(name):
    """Mean and variance of a fine forward Euler-Maruyama simulation match the closed-form kernel
    at t = 0.1, 0.5 and 1 (one batch, each path on its own grid of 1,000 steps).

    n = 20,000 paths a time: the standard error of a sample variance is var * sqrt(2/n) = 1 %, of a
    mean s / sqrt(n). Euler-Maruyama's weak bias on the variance is about beta dt / 4 <= 0.5 %, so
    we allow 5 standard errors plus that bias. The cosine schedule is simulated to t = 0.9 only:
    beyond, beta climbs to 999 and Euler-Maruyama with dt = 1e-3 is off by a third (measured);
    the moment-equation test below covers its whole interval.
    """
    sde = SDES[name]
    n, steps = 20_000, 1_000
    times = torch.tensor([0.1, 0.5, 0.9 if name == "vp_cosine" else 1.0], dtype=torch.float64)
    t = times.repeat_interleave(n)
    x0 = torch.tensor([1.5, -2.0], dtype=torch.float64).expand(3 * n, 2)
    xt = sd.simulate_forward(sde, x0, t, steps, generator=torch.Generator().manual_seed(1)).reshape(3, n, 2)
    m, s = sde.kernel(times)
    for i in range(3):
        bias = 0.005
        se_mean = s[i].item() / math.sqrt(n)
        torch.testing.assert_close(xt[i].mean(0), m[i] * x0[0], rtol=0, atol=5 * se_mean + bias * s[i].item())
        ratio = xt[i].var(0) / s[i] ** 2
        assert torch.all((ratio - 1).abs() < 5 * math.sqrt(2 / n) + bias), (times[i], ratio)


def test_ve_kernel_is_exact_not_reference_code_convention():
    """VE's exact kernel variance sigma(t)^2 - sigma_min^2 is what the SDE produces; the reference
    code's sigma(t)^2 differs by 20 % at t = 0.1 and the simulation tells them apart."""
    sde = sd.VESDE()
    n = 20_000
    x0 = torch.zeros(n, 2, dtype=torch.float64)
    xt = sd.simulate_forward(sde, x0, 0.1, 500, generator=torch.Generator().manual_seed(2))
    _, std = sde.kernel(torch.tensor(0.1, dtype=torch.float64))
    assert abs(xt.var().item() / std.item() ** 2 - 1) < 0.03  # 5 standard errors with 40,000 values
    assert abs(xt.var().item() / sde.sigma(torch.tensor(0.1)).item() ** 2 - 1) > 0.1


@pytest.mark.parametrize("name", list(SDES))
def test_kernel_solves_the_moment_equations(name):
    """For a linear SDE dx = a(t) x dt + g dw the kernel obeys dm/dt = a m and
    d(s^2)/dt = 2 a s^2 + g^2. Checked with autograd on a grid of times, to float64 precision."""
    sde = SDES[name]
    t = torch.linspace(0.02, 0.98, 49, dtype=torch.float64, requires_grad=True)
    m, s = sde.kernel(t)
    # a constant m (VE) carries no graph: its derivative is zero
    dm = torch.autograd.grad(m.sum(), t, retain_graph=True)[0] if m.requires_grad else torch.zeros_like(t)
    (dvar,) = torch.autograd.grad((s**2).sum(), t)
    x = torch.ones(t.shape[0], 1, dtype=torch.float64)
    a = sde.drift(x, t.detach())[:, 0]  # drift coefficient a(t), since f(x, t) = a(t) x
    g2 = sde.diffusion(t.detach()) ** 2
    m, s = m.detach(), s.detach()
    torch.testing.assert_close(dm, a * m, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(dvar, 2 * a * s**2 + g2, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", list(SDES))
def test_kernel_starts_at_the_data_and_ends_near_the_prior(name):
    sde = SDES[name]
    m0, s0 = sde.kernel(torch.tensor(0.0, dtype=torch.float64))
    assert m0.item() == pytest.approx(1.0) and s0.item() == pytest.approx(0.0, abs=1e-12)
    m1, s1 = sde.kernel(torch.tensor(sde.T, dtype=torch.float64))
    # at T the marginal of data of scale ~1 is within 1 % of the prior N(0, prior_std^2)
    assert m1.item() < 0.01 * sde.prior_std or name == "ve"
    assert s1.item() == pytest.approx(sde.prior_std, rel=0.01)


def test_vp_discretization_is_ddpm():
    """With beta_i = beta(t_i)/N, t_i = i/(N-1), the VP step is x_{i+1} = sqrt(1-beta_i) x_i + sqrt(beta_i) z
    and the betas are DDPM's linspace(1e-4, 0.02, 1000) (Ho et al. 2020)."""
    sde = sd.VPSDE()
    n = 1000
    betas = torch.linspace(1e-4, 0.02, n, dtype=torch.float64)
    t = torch.arange(n, dtype=torch.float64) / (n - 1)
    x = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    f, g = sde.discretize(x, t, 1.0 / n)
    torch.testing.assert_close(g**2, betas, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(x + f, torch.sqrt(1 - betas)[:, None] * x, rtol=1e-12, atol=1e-15)


def test_ve_discretization_is_ncsn():
    """x_{i+1} = x_i + sqrt(sigma_{i+1}^2 - sigma_i^2) z on the geometric sigma ladder (Song & Ermon 2019)."""
    sde = sd.VESDE()
    n = 100
    t = torch.arange(1, n + 1, dtype=torch.float64) / n
    x = torch.randn(n, 2, dtype=torch.float64)
    f, g = sde.discretize(x, t, 1.0 / n)
    sig = sde.sigma(t)
    sig_prev = torch.where(t - 1.0 / n > 1e-12, sde.sigma(t - 1.0 / n), torch.full_like(t, sde.sigma_min))
    torch.testing.assert_close(g**2, sig**2 - sig_prev**2)
    assert torch.equal(f, torch.zeros_like(x))


@pytest.mark.parametrize("name", ["subvp", "custom"])
def test_default_discretization_is_euler_maruyama(name):
    sde = SDES[name]
    x = torch.randn(4, 3, dtype=torch.float64)
    t, dt = torch.rand(4, dtype=torch.float64), 0.01
    f, g = sde.discretize(x, t, dt)
    torch.testing.assert_close(f, sde.drift(x, t) * dt)
    torch.testing.assert_close(g, sde.diffusion(t) * math.sqrt(dt))


def test_reverse_processes_follow_anderson_and_song():
    sde = sd.VPSDE()
    score = lambda x, t: -x * (1 + t[:, None])  # noqa: E731 - any smooth function will do
    x = torch.randn(5, 2, dtype=torch.float64)
    t = torch.rand(5, dtype=torch.float64)
    g2 = sde.diffusion(t)[:, None] ** 2
    torch.testing.assert_close(sde.reverse(score).drift(x, t), sde.drift(x, t) - g2 * score(x, t))
    torch.testing.assert_close(sde.probability_flow(score).drift(x, t), sde.drift(x, t) - 0.5 * g2 * score(x, t))
    torch.testing.assert_close(sde.probability_flow(score)(t[0], x), sde.probability_flow(score).drift(x, t[0]))
    # reverse diffusion predictor (Song et al. 2021, Eq. 46): x - F + G^2 s
    f, g = sde.discretize(x, t, 0.001)
    rf, rg = sde.reverse(score).discretize(x, t, 0.001)
    torch.testing.assert_close(rf, -f + g[:, None] ** 2 * score(x, t))
    torch.testing.assert_close(rg, g)


@pytest.mark.parametrize("name", list(SDES))
def test_prior_matches_torch_distributions(name):
    sde = SDES[name]
    x = sde.prior_sample((6, 1, 2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = torch.distributions.Normal(0.0, sde.prior_std).log_prob(x).reshape(6, -1).sum(1)
    torch.testing.assert_close(sde.prior_logp(x), ref)
    big = sde.prior_sample((20_000, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert abs(big.std().item() / sde.prior_std - 1) < 0.02  # SE of a std with 40,000 values: 0.35 %


def test_cosine_schedule_matches_nichol_dhariwal():
    sde = sd.CosineVPSDE()
    s = 0.008
    t = torch.linspace(0, 0.99, 100, dtype=torch.float64)
    f = lambda u: torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    alpha_bar = f(t) / f(torch.zeros(()))
    m, std = sde.kernel(t)
    torch.testing.assert_close(m**2, alpha_bar)
    torch.testing.assert_close(std**2, 1 - alpha_bar)
    # beta is clipped, continuous at the clip, and the per-step clip is 0.999 at N = 1000
    b = sde.schedule.beta(torch.linspace(0.99, 1.0, 1001, dtype=torch.float64))
    assert b.max().item() == pytest.approx(999.0) and torch.all(b.diff() >= 0)


def test_log_snr_and_its_inverse():
    for sde in SDES.values():
        t = torch.linspace(0.01, 1.0, 50, dtype=torch.float64)
        lam = sde.log_snr(t)
        assert torch.all(lam.diff() < 0)
        torch.testing.assert_close(sde.time_from_log_snr(lam, 1e-5), t, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "sde", [sd.VPSDE(), sd.VPSDE(0.5, 7.0), sd.SubVPSDE(), sd.SubVPSDE(1.0, 12.0), sd.VESDE(), sd.VESDE(0.002, 80.0)], ids=repr
)
def test_closed_form_inverse_log_snr_equals_the_bisection(sde):
    """VP, sub-VP and VE invert the log-SNR in closed form (the likelihood's log-SNR and sigma
    variables call it at every step); it must be the generic bisection's answer, clamps included."""
    t = torch.cat([torch.tensor([1e-7, 1e-5], dtype=torch.float64), torch.linspace(1e-3, 1.0, 200, dtype=torch.float64)])
    lam = torch.cat([sde.log_snr(t), torch.tensor([sde.log_snr(1e-9).item() + 5.0, sde.log_snr(1.0).item() - 5.0], dtype=torch.float64)])
    generic = sd.SDE.time_from_log_snr(sde, lam, 1e-6)
    torch.testing.assert_close(sde.time_from_log_snr(lam, 1e-6), generic, rtol=1e-12, atol=1e-14)
    assert type(sde).time_from_log_snr is not sd.SDE.time_from_log_snr  # not the bisection itself
    assert sde.time_from_log_snr(lam[-2:], 1e-6).tolist() == [1e-6, 1.0]  # beyond the ends: clamped


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: sd.VPSDE(beta_min=20, beta_max=0.1), "beta_min .* must be smaller than beta_max"),
        (lambda: sd.VPSDE(beta_min=-1), "beta_min must be a number >= 0"),
        (lambda: sd.SubVPSDE(beta_min=5, beta_max=5), "must be smaller"),
        (lambda: sd.VESDE(sigma_min=50, sigma_max=0.01), "sigma_min .* must be smaller than sigma_max"),
        (lambda: sd.VESDE(sigma_min=0), "sigma_min must be a positive number"),
        (lambda: sd.CosineVPSDE(s=-1), "cosine offset s must be a positive number"),
    ],
)
def test_invalid_parameters_are_rejected_with_the_fix(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_user_sde_without_kernel_says_so():
    sde = KernelFreeVP()
    assert not sde.has_kernel and sd.VPSDE().has_kernel
    with pytest.raises(NotImplementedError, match="sliced score matching"):
        sde.marginal(torch.zeros(2, 2), 0.5)


def test_vp_discretization_stays_finite_on_coarse_grids():
    """With 5 steps beta(t) dt reaches 4: the step beta is clipped at 0.999 instead of going NaN."""
    sde = sd.VPSDE()
    x = torch.randn(3, 2)
    f, g = sde.discretize(x, torch.tensor([0.2, 0.6, 1.0]), 0.2)
    assert torch.isfinite(f).all() and torch.isfinite(g).all()
    assert g.max().item() ** 2 == pytest.approx(0.999)
