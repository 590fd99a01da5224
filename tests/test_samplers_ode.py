"""Deterministic and fast samplers (probability-flow ODE, DDIM, EDM Heun, DPM-Solver++) against
closed forms: the exact flow map of Gaussian data, and exact samples of Gaussian-mixture marginals."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from analytic import KernelFreeOU, KernelFreeVP, core_sdes, gaussian, mixture
from apps import sampler_section
from hydra.utils import instantiate

import sde_diffusion as sd
from sde_diffusion import samplers as S
from sde_diffusion.examples.quadratic_vp import QuadraticVPSDE
from sde_diffusion.samplers import (
    CountingScore,
    ddim,
    dpm_solver_pp,
    heun,
    ode_decode,
    ode_encode,
    probability_flow_sampler,
)
from sde_diffusion.timesteps import edm_time_grid, log_snr_time_grid, uniform_time_grid

F64 = torch.float64
EPS = 1e-3
SDES = {**core_sdes(), "custom": QuadraticVPSDE()}

# name: (sampler, options, grid, steps N -> exact NFE)
SOLVERS = {
    "ddim": (ddim, {}, log_snr_time_grid, lambda n: n),
    "dpm_solver_pp_1": (dpm_solver_pp, {"order": 1}, log_snr_time_grid, lambda n: n),
    "dpm_solver_pp_2m": (dpm_solver_pp, {"order": 2}, log_snr_time_grid, lambda n: n),
    "heun": (heun, {}, edm_time_grid, lambda n: 2 * n - 1),
    "ode_euler": (probability_flow_sampler, {"method": "euler"}, uniform_time_grid, lambda n: n),
    "ode_midpoint": (probability_flow_sampler, {"method": "midpoint"}, uniform_time_grid, lambda n: 2 * n),
    "ode_heun3": (probability_flow_sampler, {"method": "heun3"}, uniform_time_grid, lambda n: 3 * n),
    "ode_rk4": (probability_flow_sampler, {"method": "rk4"}, uniform_time_grid, lambda n: 4 * n),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tests use batches of 8 to 4000 points; intra-op threads only add synchronisation there
    (on a busy 2-core machine a (16, 4) softmax takes ~10 ms with 2 threads and ~2 us with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def declared_order(sampler, options) -> int:
    if "method" in options:
        return sampler.method_orders[options["method"]]
    return options.get("order", sampler.order)


def gaussian_flow(dist: sd.GaussianMixture, sde: sd.SDE, x: torch.Tensor, t_from: float, t_to: float):
    """Exact probability-flow map of Gaussian data ``N(mu, Sigma)`` from ``t_from`` to ``t_to``.

    The marginal is ``N(m_t mu, C_t)``, ``C_t = m_t^2 Sigma + s_t^2 I``; the flow is linear and keeps
    the standardised coordinates ``C_t^{-1/2} (x - m_t mu)``, so
    ``x_to = m_to mu + C_to^{1/2} C_from^{-1/2} (x - m_from mu)`` (all ``C_t`` share Sigma's eigenbasis).
    """
    lam, vecs = torch.linalg.eigh(dist.covs[0])
    (m0, m1), (s0, s1) = sde.kernel(torch.tensor([t_from, t_to], dtype=F64))
    a = vecs @ torch.diag(((m1**2 * lam + s1**2) / (m0**2 * lam + s0**2)).sqrt()) @ vecs.T
    mu, flat = dist.means[0], x.reshape(x.shape[0], -1)
    return (m1 * mu + (flat - m0 * mu) @ a.T).reshape(x.shape)


def run(name, sde, score_fn, x, n_steps, **extra):
    sampler, options, grid, _ = SOLVERS[name]
    return sampler(sde, score_fn, x, grid(sde, n_steps, EPS, dtype=x.dtype), **options, **extra)


# ----------------------------------------------------------------------- convergence order
@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("sde_name", SDES)
def test_error_slope_matches_the_declared_order(sde_name, name):
    # The fitted slope of log-error against log-N over N = 16..128 is within 0.25 of the declared
    # order: the error is C h^p (1 + O(h)), and the measured pre-asymptotic drift is below 0.2.
    sde, dist = SDES[sde_name], gaussian(2)
    x = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    exact = gaussian_flow(dist, sde, x, sde.T, EPS)
    ns = [16, 32, 64, 128]
    errors = [(run(name, sde, dist.score_fn(sde), x, n).samples - exact).pow(2).mean().sqrt() for n in ns]
    log_n, log_err = torch.log(torch.tensor(ns, dtype=F64)), torch.log(torch.stack(errors))
    slope = -((log_n - log_n.mean()) * (log_err - log_err.mean())).sum() / (log_n - log_n.mean()).pow(2).sum()
    sampler, options, _, _ = SOLVERS[name]
    assert abs(slope - declared_order(sampler, options)) <= 0.25, (slope, errors)


def test_declared_orders():
    assert (ddim.order, heun.order, dpm_solver_pp.order) == (1, 2, 2)
    orders = probability_flow_sampler.method_orders
    assert (orders["euler"], orders["midpoint"], orders["heun3"], orders["rk4"], orders["dopri5"]) == (1, 2, 3, 4, 5)
    assert probability_flow_sampler.order == orders["dopri5"]


@pytest.mark.parametrize("sde_name", SDES)
def test_dpm_solver_pp_first_order_is_ddim(sde_name):
    # Lu et al. 2022b: DPM-Solver++(1) and DDIM (eta = 0) are the same update written two ways
    sde, dist = SDES[sde_name], mixture(2)
    x = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(2), dtype=F64)
    a = run("ddim", sde, dist.score_fn(sde), x, 10).samples
    b = run("dpm_solver_pp_1", sde, dist.score_fn(sde), x, 10).samples
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sde_name", SDES)
def test_ddim_with_eta_one_is_ancestral_sampling(sde_name):
    # eta = 1 samples the DDPM posterior q(x_u | x_t, x0_hat), which AncestralPredictor derives
    # independently; both draw one normal per step, so equal seeds give equal samples
    sde, dist = SDES[sde_name], mixture(2)
    x = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(16), dtype=F64)
    ts = log_snr_time_grid(sde, 10, EPS, dtype=F64)
    a = ddim(sde, dist.score_fn(sde), x, ts, eta=1.0, generator=torch.Generator().manual_seed(1))
    b = S.predictor_corrector(
        sde, dist.score_fn(sde), x, ts, predictor=S.AncestralPredictor(), corrector=S.NoCorrector(),
        denoise=False, generator=torch.Generator().manual_seed(1),
    )
    torch.testing.assert_close(a.samples, b.samples, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sde_name", core_sdes())
def test_adaptive_ode_matches_the_exact_flow_and_stays_in_the_time_interval(sde_name):
    # dopri5 at rtol = atol = 1e-7 keeps each local error near 1e-7 and the flow contracts towards
    # the data, so the global error stays at a few 1e-7 (measured <= 1.1e-7); 1e-5 leaves 10x room
    sde, dist = core_sdes()[sde_name], gaussian(2)
    x = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(3), dtype=F64)
    times = []

    def score(x, t):
        times.append(t[0].item())
        return dist.score(x, t, sde)

    ts = torch.tensor([sde.T, EPS], dtype=F64)
    out = probability_flow_sampler(sde, score, x, ts, rtol=1e-7, atol=1e-7)
    assert (out.samples - gaussian_flow(dist, sde, x, sde.T, EPS)).abs().max() < 1e-5
    assert min(times) >= EPS and max(times) <= sde.T  # torchdiffeq must not step past eps
    assert out.nfe == len(times)


# ------------------------------------------------------------------------------ encode / decode
@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)], ids=["points", "images"])
@pytest.mark.parametrize("sde_name", core_sdes())
def test_encode_then_decode_returns_the_input(sde_name, shape):
    sde = core_sdes()[sde_name]
    dist = mixture(math.prod(shape), n_components=3, event_shape=shape)
    g = torch.Generator().manual_seed(4)
    x = sde.perturb(dist.sample(8, generator=g, dtype=F64), EPS, generator=g)[0]
    ts = torch.tensor([sde.T, EPS], dtype=F64)
    # at rtol = atol = 1e-7 the round trip is exact to ~3e-7 (at the default 1e-5: ~1e-4)
    latent = ode_encode(sde, dist.score_fn(sde), x, ts, rtol=1e-7, atol=1e-7)
    back = ode_decode(sde, dist.score_fn(sde), latent.samples, ts, rtol=1e-7, atol=1e-7)
    assert latent.samples.shape == x.shape and latent.nfe > 0
    assert (back.samples - x).abs().max() < 1e-4


@pytest.mark.parametrize("sde_name", core_sdes())
def test_encode_matches_the_exact_latent(sde_name):
    sde, dist = core_sdes()[sde_name], gaussian(2)
    x = dist.sample(8, generator=torch.Generator().manual_seed(5), dtype=F64)
    latent = ode_encode(sde, dist.score_fn(sde), x, uniform_time_grid(sde, 200, EPS, dtype=F64), method="rk4")
    exact = gaussian_flow(dist, sde, x, EPS, sde.T)
    # rk4 with 200 steps: global error O(h^4), measured <= 1.1e-7 * prior_std (VE: 5e-6 on a scale of 50)
    assert (latent.samples - exact).abs().max() < 1e-6 * sde.prior_std


# ------------------------------------------------------------------------- right distribution
N_SAMPLES, N_REFERENCE = 2000, 100_000


def features(x: torch.Tensor, dist: sd.GaussianMixture, sde: sd.SDE) -> torch.Tensor:
    """Statistics whose means pin down a 2-D mixture: first and second moments, the share of
    each component (hard assignment), and the mean exact log-density ``log p_eps``; ``(n, 10)``."""
    i, j = torch.triu_indices(2, 2)
    comp = torch.nn.functional.one_hot(dist.responsibilities(x).argmax(1), dist.n_components)
    return torch.cat([x, x[:, i] * x[:, j], comp.to(x.dtype), dist.log_prob(x, EPS, sde)[:, None]], 1)


@functools.cache
def reference_features(sde_name: str, seed: int = 6) -> torch.Tensor:
    """Features of ``N_REFERENCE`` exact samples of ``p_eps`` of ``mixture(2)`` under ``SDES[sde_name]``."""
    sde, dist, g = SDES[sde_name], mixture(2), torch.Generator().manual_seed(seed)
    return features(sde.perturb(dist.sample(N_REFERENCE, generator=g, dtype=F64), EPS, generator=g)[0], dist, sde)


def assert_same_distribution(samples, sde_name):
    """Each feature mean of ``samples`` matches that of exact ``p_eps`` samples within 4.5 standard
    errors (about 7e-6 two-sided per feature under the null), the error of a difference of means."""
    f_ref, f = reference_features(sde_name), features(samples, mixture(2), SDES[sde_name])
    se = (f_ref.var(0) * (1 / len(f) + 1 / len(f_ref))).sqrt()
    z = (f.mean(0) - f_ref.mean(0)) / se
    assert z.abs().max() < 4.5, z


DISTRIBUTION_CASES = {  # sampler: (name, options, n_steps), steps chosen so bias << standard error
    "ddim": ("ddim", {}, 100),
    "ddim_eta1": ("ddim", {"eta": 1.0}, 200),
    "heun": ("heun", {}, 30),
    "dpm_solver_pp_2m": ("dpm_solver_pp_2m", {}, 30),
    "ode_rk4": ("ode_rk4", {}, 50),
}


@pytest.mark.parametrize("case", DISTRIBUTION_CASES)
@pytest.mark.parametrize("sde_name", core_sdes())
def test_samples_follow_the_true_mixture(sde_name, case):
    sde, dist = SDES[sde_name], mixture(2)
    name, extra, n_steps = DISTRIBUTION_CASES[case]
    g = torch.Generator().manual_seed(7)
    x = sde.prior_sample((N_SAMPLES, 2), generator=g, dtype=F64)
    samples = run(name, sde, dist.score_fn(sde), x, n_steps, generator=g, **extra).samples
    assert_same_distribution(samples, sde_name)


def test_custom_sde_samples_follow_the_true_mixture():
    sde, dist = SDES["custom"], mixture(2)
    x = sde.prior_sample((N_SAMPLES, 2), generator=torch.Generator().manual_seed(8), dtype=F64)
    assert_same_distribution(run("dpm_solver_pp_2m", sde, dist.score_fn(sde), x, 30).samples, "custom")


def test_the_distribution_check_detects_a_wrong_sampler():
    # power check: 3 DDIM steps leave a visible bias, which the same statistic must reject
    sde, dist = SDES["vp"], mixture(2)
    x = sde.prior_sample((N_SAMPLES, 2), generator=torch.Generator().manual_seed(7), dtype=F64)
    with pytest.raises(AssertionError):
        assert_same_distribution(run("ddim", sde, dist.score_fn(sde), x, 3).samples, "vp")


# ------------------------------------------------------------------- contract: NFE, seeds, shapes
@pytest.mark.parametrize("name", SOLVERS)
def test_nfe_is_exact(name):
    sde, dist, n = sd.VPSDE(), mixture(2), 5
    counter = CountingScore(dist.score_fn(sde))
    x = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(9), dtype=F64)
    out = run(name, sde, counter, x, n)
    assert out.nfe == counter.nfe == SOLVERS[name][3](n)


def test_ddim_with_noise_is_reproducible_from_its_generator():
    sde, dist = sd.VPSDE(), mixture(2)
    x = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(10), dtype=F64)

    def sample(seed):
        torch.manual_seed(seed + 100)  # the global RNG must not matter
        return run("ddim", sde, dist.score_fn(sde), x, 10, eta=0.5, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(0).samples, sample(0).samples)
    assert not torch.allclose(sample(0).samples, sample(1).samples)


@pytest.mark.parametrize("name", SOLVERS)
def test_images_and_points_follow_the_same_path(name):
    # a (B, 1, 8, 8) batch and the same numbers as (B, 64) points must give the same samples
    sde = sd.VESDE()
    images, points = mixture(64, event_shape=(1, 8, 8)), mixture(64)
    x = sde.prior_sample((4, 1, 8, 8), generator=torch.Generator().manual_seed(11), dtype=F64)
    out_img = run(name, sde, images.score_fn(sde), x, 4)
    out_pts = run(name, sde, points.score_fn(sde), x.reshape(4, 64), 4)
    assert out_img.samples.shape == (4, 1, 8, 8)
    torch.testing.assert_close(out_img.samples.reshape(4, 64), out_pts.samples, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["ddim", "heun", "dpm_solver_pp_2m", "ode_rk4"])
def test_float32_runs_in_float32_and_agrees_with_float64(name):
    # float32 round-off (~1e-7 relative) accumulates over 20 steps to well under 1e-4
    sde, dist = sd.VPSDE(), mixture(2)
    x = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(12), dtype=F64)
    out32 = run(name, sde, dist.score_fn(sde), x.float(), 20).samples
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), run(name, sde, dist.score_fn(sde), x, 20).samples, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["ddim", "heun", "dpm_solver_pp_2m", "ode_euler"])
def test_progress_bar_changes_nothing(name, capsys):
    sde, dist = sd.VPSDE(), mixture(2)
    x = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(13), dtype=F64)
    quiet = run(name, sde, dist.score_fn(sde), x, 5)
    loud = run(name, sde, dist.score_fn(sde), x, 5, progress=True)
    assert torch.equal(quiet.samples, loud.samples) and quiet.nfe == loud.nfe


def test_fixed_step_size_equals_the_matching_uniform_grid():
    sde, dist = sd.VPSDE(), mixture(2)
    x = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(14), dtype=F64)
    on_grid = probability_flow_sampler(sde, dist.score_fn(sde), x, uniform_time_grid(sde, 8, EPS, dtype=F64), method="rk4")
    ends = torch.tensor([sde.T, EPS], dtype=F64)
    stepped = probability_flow_sampler(sde, dist.score_fn(sde), x, ends, method="rk4", step_size=(sde.T - EPS) / 8)
    torch.testing.assert_close(stepped.samples, on_grid.samples, rtol=1e-9, atol=1e-9)
    assert stepped.nfe == on_grid.nfe == 32


# ----------------------------------------------------------------------------------- validation
def _score(x, t):
    return -x


@pytest.mark.parametrize("sampler", [ddim, heun, dpm_solver_pp], ids=lambda f: f.__name__)
def test_kernel_samplers_name_what_is_missing(sampler):
    x, ts = torch.zeros(2, 2), torch.tensor([1.0, 0.5, 1e-3])
    with pytest.raises(ValueError, match="kernel"):
        sampler(KernelFreeVP(), _score, x, ts)
    with pytest.raises(ValueError, match="eps > 0"):
        sampler(sd.VPSDE(), _score, x, torch.tensor([1.0, 0.5, 0.0]))
    with pytest.raises(ValueError, match="decrease"):
        sampler(sd.VPSDE(), _score, x, ts.flip(0))


def test_the_ode_sampler_works_without_a_kernel():
    # dx/dt = -x + x/2 for the OU process with score -x: x_eps = x_T exp((T - eps) / 2)
    x = torch.ones(3, 2, dtype=F64)
    out = probability_flow_sampler(KernelFreeOU(), _score, x, torch.tensor([1.0, EPS], dtype=F64), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.samples, x * math.exp((1.0 - EPS) / 2), rtol=1e-7, atol=0)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda x, ts: ddim(sd.VPSDE(), _score, x, ts, eta=1.5), "eta"),
        (lambda x, ts: dpm_solver_pp(sd.VPSDE(), _score, x, ts, order=4), "order"),
        (lambda x, ts: probability_flow_sampler(sd.VPSDE(), _score, x, ts, method="rk45"), "unknown ODE method"),
        (lambda x, ts: probability_flow_sampler(sd.VPSDE(), _score, x, ts, step_size=0.1), "fixed-grid"),
        (lambda x, ts: probability_flow_sampler(sd.VPSDE(), _score, x, ts, method="euler", step_size=-0.1), "step_size must be a positive number"),
        (lambda x, ts: ode_encode(sd.VPSDE(), _score, x, ts.flip(0)), "decrease"),
    ],
)
def test_bad_options_are_rejected_with_the_fix(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.zeros(2, 2), torch.tensor([1.0, 0.5, 1e-3]))


def test_a_misspelt_ode_option_is_named():
    with pytest.raises(TypeError, match="mehtod"):
        probability_flow_sampler(sd.VPSDE(), _score, torch.zeros(2, 2), torch.tensor([1.0, 1e-3]), mehtod="rk4")


# -------------------------------------------------------------------------------------- configs
CONFIGS = {  # config: the call it must build
    "ode": (probability_flow_sampler, {"method": "dopri5", "rtol": 1e-5, "atol": 1e-5}, uniform_time_grid, {"n_steps": 1}),
    "ddim": (ddim, {"eta": 0.0}, log_snr_time_grid, {"n_steps": 50}),
    "heun": (heun, {}, edm_time_grid, {"n_steps": 18, "rho": 7.0}),
    "dpm_solver": (dpm_solver_pp, {"order": 2}, log_snr_time_grid, {"n_steps": 20}),
}


@pytest.mark.parametrize("config", CONFIGS)
def test_configs_build_the_documented_sampler(config):
    cfg = sampler_section(config)
    sde, dist = sd.VPSDE(), gaussian(2)
    fn, ts = instantiate(cfg.fn), instantiate(cfg.grid)(sde, device="cpu", dtype=F64)
    x = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(15), dtype=F64)
    sampler, options, grid, grid_options = CONFIGS[config]
    expected = sampler(sde, dist.score_fn(sde), x, grid(sde, eps=EPS, dtype=F64, **grid_options), **options)
    out = fn(sde, dist.score_fn(sde), x, ts)
    assert torch.equal(out.samples, expected.samples) and out.nfe == expected.nfe
