"""The probability-flow likelihood against closed forms, and bits per dimension of discrete data.

Oracle: with the exact score of Gaussian or Gaussian-mixture data, the ODE transports the true
marginal ``p_eps`` to the true marginal ``p_T``, so the change of variables is exact:
``log p_eps(x) = log p_T(x_T) + int div``. ``log_likelihood`` uses the SDE's prior in place of
``p_T``; the prior is only close to ``p_T`` (for these mixtures ``log prior - log p_T`` is
1e-3 to 1e-2 nats/dim at ``x_T``, far above the solver error), so the solver is checked through
:func:`with_true_terminal`, which swaps the prior for ``p_T``. All remaining error is the solver's.
"""

from __future__ import annotations

import math

import pytest
import torch

import sde_diffusion as sd
from analytic import all_sdes, core_sdes, gaussian, mixture
from sde_diffusion.likelihood import divergence
from sde_diffusion.likelihood import (
    bits_per_dim,
    dequantization_offset,
    dequantize,
    log_likelihood,
    nats_per_dim,
)

EPS = 1e-5
IMAGE = (1, 8, 8)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tensors here are tiny: intra-op threads only add synchronisation, and on a shared 2-core
    # machine their spinning slows every small op by orders of magnitude.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def data(dist, n, seed=0, dtype=torch.float64):
    return dist.sample(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def with_true_terminal(out, sde, dist):
    """``out.logp`` with the prior replaced by the true marginal ``p_T``: exactly ``log p_eps(x)``
    up to solver error when the score is exact."""
    return out.logp - sde.prior_logp(out.latent) + dist.log_prob(out.latent, sde.T, sde)


def per_dim_error(logp, exact, dist):
    return ((logp - exact) / dist.dim).abs().max().item()


# ------------------------------------------------------------------------ Gaussian data, exact
@pytest.mark.parametrize("name", sorted(all_sdes()))
def test_gaussian_logp_and_latent_match_closed_form(name):
    sde = all_sdes()[name]
    dist = gaussian(dim=2, seed=1)
    x = data(dist, 8)
    out = log_likelihood(sde, dist.score_fn(sde), x, eps=EPS, rtol=1e-7, atol=1e-7)
    # dopri5 at rtol = atol = 1e-7 leaves <= 3e-7 nats/dim here (7e-6 for the cosine schedule, whose
    # beta reaches 999 near T); the target is 1e-4.
    assert per_dim_error(with_true_terminal(out, sde, dist), dist.log_prob(x, EPS, sde), dist) < 1e-4
    # logp itself refers to the prior: it differs from log p_eps by exactly the prior mismatch
    mismatch = sde.prior_logp(out.latent) - dist.log_prob(out.latent, sde.T, sde)
    assert per_dim_error(out.logp - mismatch, dist.log_prob(x, EPS, sde), dist) < 1e-4
    # Gaussian marginals: the flow scales each eigen-coordinate of x - m(t) mu by sqrt(v_T / v_eps)
    # with v_t = m(t)^2 lambda + s(t)^2 (the ODE is linear in x).
    lam, vec = torch.linalg.eigh(dist.covs[0])
    (m0, s0), (m1, s1) = (sde.kernel(torch.tensor(t, dtype=torch.float64)) for t in (EPS, sde.T))
    ratio = ((m1**2 * lam + s1**2) / (m0**2 * lam + s0**2)).sqrt()
    expected = m1 * dist.means[0] + ((x - m0 * dist.means[0]) @ vec * ratio) @ vec.T
    scale = expected.abs().max()
    assert (out.latent - expected).abs().max() / scale < 1e-5


@pytest.mark.parametrize("backend", ["torchdiffeq", "scipy"])
def test_nfe_counts_score_evaluations_inside_eps_to_T(backend):
    sde, dist = sd.CosineVPSDE(), gaussian(dim=2)
    calls, times = [], []
    exact_score = dist.score_fn(sde)

    def score(x, t):
        calls.append(x.shape[0])
        times.append(t)
        return exact_score(x, t)

    out = log_likelihood(sde, score, data(dist, 4), backend=backend)
    assert out.nfe == len(calls) > 0
    assert set(calls) == {4}  # every call is one batched evaluation, the probes share it
    times = torch.cat(times)
    # adaptive steps must land on T, not overshoot it (the score is not defined past T; stepping past
    # it cost the cosine schedule 3e-3 nats/dim)
    assert times.min() >= EPS and times.max() <= sde.T


# ----------------------------------------------------------------------- mixtures, exact score
@pytest.fixture(scope="module")
def mixture8():
    dist = mixture(dim=8, seed=2)
    return dist, data(dist, 8, seed=3)


@pytest.fixture(scope="module")
def exact8(mixture8):
    dist, x = mixture8
    return {name: log_likelihood(sde, dist.score_fn(sde), x, eps=EPS, rtol=1e-6, atol=1e-6) for name, sde in core_sdes().items()}


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_mixture_exact_divergence_matches_log_density(mixture8, exact8, name):
    dist, x = mixture8
    sde = core_sdes()[name]
    # measured <= 2e-5 nats/dim at rtol = atol = 1e-6; the bound is 1e-3, we keep 10x margin
    assert per_dim_error(with_true_terminal(exact8[name], sde, dist), dist.log_prob(x, EPS, sde), dist) < 2e-4


def test_sdes_agree_on_log_p0(mixture8, exact8):
    dist, x = mixture8
    # log p_eps differs from log p_0 by O(s(eps)^2 tr Sigma^-1) < 1e-5 nats/dim at eps = 1e-5, so
    # every SDE must land within its solver error (< 2e-4 nats/dim, above) of the data density.
    logp0 = dist.log_prob(x)
    for name, sde in core_sdes().items():
        assert per_dim_error(with_true_terminal(exact8[name], sde, dist), logp0, dist) < 2e-4, name


def test_hutchinson_within_its_standard_error(mixture8):
    dist, x = mixture8
    sde = sd.VPSDE()
    exact = dist.log_prob(x, EPS, sde)
    g = torch.Generator().manual_seed(4)
    out = log_likelihood(sde, dist.score_fn(sde), x, divergence="hutchinson", n_probes=64, generator=g, rtol=1e-7, atol=1e-7)
    assert out.logp_probes.shape == (64, 8) and out.logp_stderr.shape == (8,)
    assert torch.allclose(out.logp, out.logp_probes.mean(0))
    # With 64 probes z = (mean - exact) / stderr is close to Student's t with 63 dof (the solver
    # error, ~1e-5 nats, is far below the stderr, 0.1 to 0.4 nats). |z| < 4.5 at all 8 points fails
    # with probability 2.4e-4; the RMS of the 8 z-scores leaves [0.3, 1.8] with probability 1.6e-3
    # (chi-square, 8 dof), so a stderr off by a factor sqrt(64) or 3 in either direction fails.
    z = (with_true_terminal(out, sde, dist) - exact) / out.logp_stderr
    assert z.abs().max() < 4.5
    assert 0.3 < z.pow(2).mean().sqrt() < 1.8
    assert (out.logp_stderr > 0).all()


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_probe_is_fixed_through_the_solve(mixture8, exact8, probe):
    dist, x = mixture8
    sde = sd.VPSDE()
    # a probe resampled at every evaluation makes the field random and the step count explode (the
    # step cap turns that into a failure); a fixed probe costs about what the exact divergence does
    cap = {"max_num_steps": exact8["vp"].nfe}
    run = lambda seed: log_likelihood(
        sde,
        dist.score_fn(sde),
        x,
        divergence="hutchinson",
        probe=probe,
        n_probes=2,
        generator=torch.Generator().manual_seed(seed),
        rtol=1e-6,
        atol=1e-6,
        options=cap,
    )
    first, again, other = run(5), run(5), run(6)
    assert torch.equal(first.logp, again.logp)
    assert not torch.allclose(first.logp, other.logp)
    assert first.nfe <= 1.5 * exact8["vp"].nfe  # measured 1.05x (Rademacher), 1.15x (Gaussian)


# ------------------------------------------------------------------------------ backends
def test_scipy_backend_agrees_with_torchdiffeq():
    sde, dist = sd.SubVPSDE(), mixture(dim=2, seed=5)
    x = data(dist, 6)
    outs = {
        backend: log_likelihood(sde, dist.score_fn(sde), x, rtol=1e-8, atol=1e-8, backend=backend) for backend in ("torchdiffeq", "scipy")
    }
    # RK45 and dopri5 share a tableau; at 1e-8 each is ~1e-8 nats/dim from the truth and they agree
    # to 3e-9 nats/dim (latents to 1e-9): 1e-6 leaves room for different step choices
    assert per_dim_error(outs["scipy"].logp, outs["torchdiffeq"].logp, dist) < 1e-6
    assert torch.allclose(outs["scipy"].latent, outs["torchdiffeq"].latent, rtol=0, atol=1e-7)
    assert per_dim_error(with_true_terminal(outs["scipy"], sde, dist), dist.log_prob(x, EPS, sde), dist) < 1e-6


def test_scipy_backend_on_images_with_hutchinson():
    sde, dist = sd.VESDE(), mixture(dim=64, n_components=2, seed=6, event_shape=IMAGE)
    x = data(dist, 2)
    outs = [
        log_likelihood(
            sde, dist.score_fn(sde), x, divergence="hutchinson", n_probes=2, backend=backend, generator=torch.Generator().manual_seed(7)
        )
        for backend in ("torchdiffeq", "scipy")
    ]
    assert outs[1].latent.shape == x.shape and outs[1].logp_probes.shape == (2, 2)
    # same seed, same probes: the two solvers estimate the same integral; at the default tolerance
    # (1e-5) they agree to 6e-6 nats/dim
    assert ((outs[0].logp_probes - outs[1].logp_probes) / 64).abs().max() < 1e-4


# ----------------------------------------------------------------------- shapes and dtypes
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_points_in_both_dtypes(dtype):
    sde, dist = sd.VPSDE(), mixture(dim=2, seed=7)
    x = data(dist, 8, dtype=dtype)
    out = log_likelihood(sde, dist.score_fn(sde), x)
    assert out.logp.dtype == dtype and out.logp.shape == (8,) and out.latent.shape == x.shape
    # default tolerance 1e-5: measured 5.5e-5 nats/dim in both dtypes (float32 rounding of
    # O(10)-nat values is ~1e-6, below the solver error)
    assert per_dim_error(with_true_terminal(out, sde, dist).double(), dist.log_prob(x.double(), EPS, sde), dist) < 5e-4


@pytest.fixture(scope="module")
def image_mixture():
    dist = mixture(dim=64, n_components=3, seed=8, event_shape=IMAGE)
    return dist, data(dist, 4, seed=9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_images_exact_divergence(image_mixture, dtype):
    dist, x = image_mixture
    sde = sd.VPSDE()
    x = x.to(dtype)
    out = log_likelihood(sde, dist.score_fn(sde), x)
    assert x.shape == (4, *IMAGE) and out.latent.shape == x.shape and out.logp.dtype == dtype
    # measured 7e-5 nats/dim at the default tolerance in 64 dims, in both dtypes
    assert per_dim_error(with_true_terminal(out, sde, dist).double(), dist.log_prob(x.double(), EPS, sde), dist) < 5e-4
    flat = log_likelihood(sde, dist.score_fn(sde), x.flatten(1))
    assert torch.allclose(flat.logp, out.logp, rtol=1e-5)  # one code path for points and images


def test_images_hutchinson(image_mixture):
    dist, x = image_mixture
    sde = sd.VPSDE()
    out = log_likelihood(sde, dist.score_fn(sde), x, divergence="hutchinson", n_probes=8, generator=torch.Generator().manual_seed(1))
    assert out.logp_probes.shape == (8, 4) and out.logp_stderr.shape == (4,)
    z = (with_true_terminal(out, sde, dist) - dist.log_prob(x, EPS, sde)) / out.logp_stderr
    # 8 probes: t-distributed with 7 dof; |z| > 6 at any of the 4 points has probability 2e-3
    assert z.abs().max() < 6


# ------------------------------------------------------------------------- divergence blocks
@pytest.mark.parametrize("shape", [(2,), (1, 2, 2)])
@pytest.mark.parametrize("block_rows", [1, 10, 10**9])
def test_probe_blocks_give_the_quadratic_forms_of_a_linear_field(monkeypatch, shape, block_rows):
    # f(x) = A x has Jacobian A everywhere, so every form is v^T A v in closed form, however the probes
    # are split into backward passes (block_rows = 10 with B = 5: blocks of 2 probes; 1: one each)
    monkeypatch.setattr(divergence, "PROBE_BLOCK_ROWS", block_rows)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, *shape, generator=g, dtype=torch.float64)
    d = x[0].numel()
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    field = lambda z: (z.flatten(1) @ a.T).reshape(z.shape)
    for probes in (divergence.basis_probes(x), divergence.random_probes(x, "gaussian", 7, g)):
        f, forms = divergence.jacobian_quadratic_forms(field, x, probes)
        v = probes.flatten(2)
        assert torch.allclose(f, field(x))
        assert forms.shape == (probes.shape[0], 5)
        assert torch.allclose(forms, torch.einsum("pbi,ij,pbj->pb", v, a, v), rtol=1e-12, atol=1e-12)
    _, diagonal = divergence.jacobian_quadratic_forms(field, x, divergence.basis_probes(x))
    assert torch.allclose(diagonal.sum(0), a.trace().expand(5), rtol=1e-12)  # the exact divergence


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"divergence": "trace"}, "divergence must be one of"),
        ({"probe": "sphere", "divergence": "hutchinson"}, "probe must be one of"),
        ({"n_probes": 0, "divergence": "hutchinson"}, "n_probes must be a positive integer"),
        ({"n_probes": 4}, "applies to divergence='hutchinson' only"),
        ({"backend": "jax"}, "backend must be one of"),
        ({"eps": 1.0}, r"eps must lie in \[0, 1\), got 1.0"),
        ({"rtol": 0.0}, "rtol must be a positive number"),
        ({"method": "rk4"}, "needs options=\\{'step_size'"),
        ({"method": "rk4", "backend": "scipy"}, "`method` must be one of"),
    ],
)
def test_invalid_options_are_named(kwargs, message):
    sde, dist = sd.VPSDE(), gaussian()
    with pytest.raises(ValueError, match=message):
        log_likelihood(sde, dist.score_fn(sde), data(dist, 2), **kwargs)


def test_fixed_grid_rk4_converges_at_fourth_order():
    sde, dist = sd.VPSDE(), gaussian(dim=2, seed=4)
    x = data(dist, 4)
    errors = []
    for steps in (16, 32):
        out = log_likelihood(sde, dist.score_fn(sde), x, method="rk4", options={"step_size": 1 / steps})
        assert out.nfe == 4 * steps
        errors.append(per_dim_error(with_true_terminal(out, sde, dist), dist.log_prob(x, EPS, sde), dist))
    # measured 9.0e-5 and 5.2e-6 nats/dim: a ratio of 17 ~ 2^4; order >= 3.5 leaves room for the
    # pre-asymptotic regime, an order-3 bug (ratio 8) fails
    assert errors[0] / errors[1] > 2**3.5
    assert errors[1] < 1e-5


def test_invalid_data_is_rejected():
    sde, dist = sd.VPSDE(), gaussian()
    with pytest.raises(TypeError, match="floating point"):
        log_likelihood(sde, dist.score_fn(sde), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        log_likelihood(sde, dist.score_fn(sde), torch.zeros(2))


# ------------------------------------------------------------------------------ bits per dim
@pytest.mark.parametrize("levels, interval, bits", [(256, (-1.0, 1.0), 7.0), (256, (0.0, 1.0), 8.0), (32, (0.0, 4.0), 3.0)])
def test_offset_is_log2_levels_over_width(levels, interval, bits):
    assert dequantization_offset(levels, interval) == pytest.approx(bits, abs=1e-12)


@pytest.mark.parametrize("shape", [(2,), IMAGE])
def test_dequantize_fills_each_bin(shape):
    levels, low, high = 16, -1.0, 1.0
    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, levels, (50, *shape), generator=g)
    x = low + k * (high - low) / levels
    y = dequantize(x, levels, (low, high), n_dequant=3, generator=g)
    assert y.shape == (150, *shape)
    # each draw stays in its own bin [x, x + w / K): flooring recovers the level
    assert torch.equal(torch.floor((y - low) * levels / (high - low)).long(), k.repeat(3, *[1] * len(shape)))
    u = (y - x.repeat(3, *[1] * len(shape))) * levels / (high - low)
    assert u.min() >= 0 and u.max() < 1
    # mean of n ~ U[0, 1) has std 1 / sqrt(12 n); 5 sigma
    assert abs(u.mean().item() - 0.5) < 5 / math.sqrt(12 * u.numel())


def test_dequantize_rejects_data_off_the_left_edges():
    x = torch.tensor([[0.0, 1.0]])  # 1.0 is the right end of [0, 1], not a left edge
    with pytest.raises(ValueError, match="left bin edges"):
        dequantize(x, 256, (0.0, 1.0))
    with pytest.raises(ValueError, match="left bin edges"):
        dequantize(torch.tensor([[3 / 255]]), 256, (0.0, 1.0))  # k / 255 scaling
    with pytest.raises(ValueError, match="levels must be an integer"):
        dequantize(torch.zeros(1, 2), 1, (0.0, 1.0))
    with pytest.raises(ValueError, match="interval must be finite"):
        dequantize(torch.zeros(1, 2), 4, (1.0, 0.0))


def test_bits_per_dim_of_a_known_discrete_distribution():
    # Independent categorical levels with probabilities pi on K = 4 bins of [-1, 1): the dequantized
    # density is pi_k * K / w on bin k, so bpd must equal the discrete NLL -sum log2 pi_k / D exactly,
    # and its mean over samples the entropy H(pi) in bits.
    levels, interval, dim, n = 4, (-1.0, 1.0), 6, 4000
    width = interval[1] - interval[0]
    pi = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    k = torch.multinomial(pi, n * dim, replacement=True, generator=g).reshape(n, dim)
    x = interval[0] + k.double() * width / levels
    y = dequantize(x, levels, interval, n_dequant=2, generator=g)
    level_of_y = torch.floor((y - interval[0]) * levels / width).long()
    logp = torch.log(pi[level_of_y] * levels / width).sum(1)  # exact density of the dequantized data
    bpd = bits_per_dim(logp, dim, levels, interval, n_dequant=2)
    nll_bits = -torch.log2(pi[k]).sum(1) / dim
    assert bpd.shape == (n,)
    assert torch.allclose(bpd, nll_bits, atol=1e-12)
    entropy = -(pi * pi.log2()).sum()
    # std of per-point bpd is std(-log2 pi_k) / sqrt(D); 5 standard errors of the mean over n points
    tol = 5 * (-torch.log2(pi[k])).std() / math.sqrt(dim * n)
    assert abs(bpd.mean() - entropy) < tol
    # uniform levels: density 1 / w per dim, bpd = log2 K
    uniform = torch.full((3,), -dim * math.log(width), dtype=torch.float64)
    assert torch.allclose(bits_per_dim(uniform, dim, levels, interval), torch.full((3,), 2.0, dtype=torch.float64))


def test_bits_and_nats_per_dim_conversions():
    logp = torch.tensor([-10.0, -20.0, -30.0, -40.0], dtype=torch.float64)
    assert torch.allclose(nats_per_dim(logp, 5), torch.tensor([2.0, 4.0, 6.0, 8.0], dtype=torch.float64))
    # draw-major: draws (-10, -30) belong to point 0 and (-20, -40) to point 1
    expected = torch.tensor([4.0, 6.0], dtype=torch.float64) / math.log(2) + 7.0
    assert torch.allclose(bits_per_dim(logp, 5, 256, n_dequant=2), expected)
    with pytest.raises(ValueError, match="n_dequant"):
        bits_per_dim(logp, 5, 256, n_dequant=3)


def test_dequantized_likelihood_end_to_end():
    # 8-bit points in [-1, 1) through the ODE: bpd is the nats/dim of the draws plus exactly 7 bits
    sde, dist = sd.VPSDE(), gaussian(dim=2, seed=3)
    x = torch.floor((data(dist, 4).clamp(-0.99, 0.99) + 1) * 128) / 128 - 1
    y = dequantize(x, 256, n_dequant=2, generator=torch.Generator().manual_seed(0))
    out = log_likelihood(sde, dist.score_fn(sde), y)
    bpd = bits_per_dim(out.logp, 2, 256, n_dequant=2)
    assert bpd.shape == (4,)
    assert torch.allclose(bpd, nats_per_dim(out.logp, 2).reshape(2, 4).mean(0) / math.log(2) + 7.0)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_with_the_true_terminal_density_the_ode_gives_the_true_log_density(name):
    """prior_logp swaps the SDE's prior for the true p_T: what remains is solver error alone, here
    under 1e-5 nats/dim on a non-centred 3-D Gaussian (the prior alone would cost ~1e-2 for VE)."""
    sde = core_sdes()[name]
    dist = gaussian(dim=3, seed=7)
    x = dist.sample(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sd.log_likelihood(sde, dist.score_fn(sde), x, rtol=1e-8, atol=1e-8, prior_logp=lambda z: dist.log_prob(z, sde.T, sde))
    exact = dist.log_prob(x, 1e-5, sde)
    assert (out.logp - exact).abs().max().item() / 3 < 1e-5


# ------------------------------------------------------------------------------ time variables
@pytest.mark.parametrize("variable", ["log_snr", "sigma"])
@pytest.mark.parametrize("name", sorted(all_sdes()))
def test_every_time_variable_gives_the_t_time_log_density_of_gaussian_data(name, variable):
    """The change of variable (and, for sigma, of state ``y = x / m``) moves no density: at tight
    tolerances the log-SNR and sigma solves equal the t solve and the closed form to 1e-5 nats/dim,
    and land on the same x_T."""
    sde = all_sdes()[name]
    dist = gaussian(dim=3, seed=5)
    x = data(dist, 8, seed=1)
    true_terminal = lambda z: dist.log_prob(z, sde.T, sde)  # noqa: E731
    in_t = log_likelihood(sde, dist.score_fn(sde), x, rtol=1e-8, atol=1e-8, prior_logp=true_terminal)
    other = log_likelihood(sde, dist.score_fn(sde), x, rtol=1e-8, atol=1e-8, prior_logp=true_terminal, time_variable=variable)
    assert per_dim_error(other.logp, in_t.logp, dist) < 1e-5
    assert per_dim_error(other.logp, dist.log_prob(x, EPS, sde), dist) < 1e-5
    assert (other.latent - in_t.latent).abs().max().item() < 1e-5 * in_t.latent.abs().max().item()


@pytest.mark.parametrize("variable", ["log_snr", "sigma"])
def test_time_variables_on_a_mixture_with_hutchinson_probes(mixture8, variable):
    """Rademacher probes give ``v^T (c I) v = c D`` for any scalar factor, so the Hutchinson estimate
    with the same probes is the same number in every variable (up to solver error); and it stays
    within its standard error of the true density."""
    dist, x = mixture8
    sde = sd.VPSDE()
    kwargs = dict(divergence="hutchinson", n_probes=4, rtol=1e-7, atol=1e-7, prior_logp=lambda z: dist.log_prob(z, sde.T, sde))
    in_t = log_likelihood(sde, dist.score_fn(sde), x, generator=torch.Generator().manual_seed(0), **kwargs)
    other = log_likelihood(sde, dist.score_fn(sde), x, generator=torch.Generator().manual_seed(0), time_variable=variable, **kwargs)
    assert per_dim_error(other.logp_probes, in_t.logp_probes, dist) < 1e-4
    assert ((other.logp - dist.log_prob(x, EPS, sde)).abs() < 4 * other.logp_stderr + 1e-3).all()


@pytest.mark.parametrize("variable", ["log_snr", "sigma"])
def test_time_changed_solves_call_the_score_inside_eps_to_T(variable):
    sde, dist = sd.CosineVPSDE(), gaussian(dim=2)
    times = []
    exact_score = dist.score_fn(sde)

    def score(z, t):
        times.append(t)
        return exact_score(z, t)

    out = log_likelihood(sde, score, data(dist, 4), time_variable=variable)
    times = torch.cat(times)
    assert out.nfe == len(times) // 4 and times.min() >= EPS * (1 - 1e-6) and times.max() <= sde.T * (1 + 1e-6)


def test_time_variables_need_a_kernel_and_a_known_name():
    from analytic import KernelFreeVP

    sde, dist = KernelFreeVP(), gaussian()
    with pytest.raises(
        ValueError, match="time_variable=log_snr needs an SDE with a closed-form kernel; KernelFreeVP has none: use time_variable=t"
    ):
        log_likelihood(sde, dist.score_fn(sd.VPSDE()), data(dist, 2), time_variable="log_snr")
    with pytest.raises(ValueError, match="time_variable must be one of"):
        log_likelihood(sd.VPSDE(), dist.score_fn(sd.VPSDE()), data(dist, 2), time_variable="lambda")
    with pytest.raises(ValueError, match="bound=elbo solves no ODE"):
        sd.evaluate_nll(sd.VPSDE(), dist.score_fn(sd.VPSDE()), data(dist, 2), bound="elbo", time_variable="sigma")
