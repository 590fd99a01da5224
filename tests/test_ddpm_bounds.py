"""DDPM's variational bound, its terms, the hybrid loss, the continuous ELBO and the DDPM sampler
against closed forms: Gaussian KLs, normal-CDF masses, Bayes-optimal bounds on Gaussian data, the
I-MMSE form of the continuous ELBO, the law of the linear-Gaussian sampling chain."""

from __future__ import annotations

import math

import pytest
import torch
from analytic import gaussian, mixture
from torch import nn

import sde_diffusion as sd
from sde_diffusion._noise import PerSampleNoise
from sde_diffusion.likelihood.bounds import continuous_elbo, discrete_vlb
from sde_diffusion.losses.ddpm import HybridLoss, LossAwareStepSampler
from sde_diffusion.losses.vlb import discretized_gaussian_log_prob, normal_kl, step_terms
from sde_diffusion.sdes.discrete import DDPMSDE, DiscreteSchedule, linear_betas

F64 = torch.float64
SIG2 = 0.3  # variance of the 1-D Gaussian data


def _normal1d(var: float) -> sd.GaussianMixture:
    return sd.GaussianMixture([1.0], torch.zeros(1, 1, dtype=F64), torch.full((1, 1, 1), var, dtype=F64))


def _chain_sde(T: int = 100, b0: float = 2e-3, b1: float = 0.2) -> DDPMSDE:
    return DDPMSDE(DiscreteSchedule(linear_betas(T, b0, b1)))


def _tables(betas: torch.Tensor):
    """Independent closed forms: abar_i = prod_{j<=i} (1 - beta_j), beta_tilde_i, i = 0..T (index 0 unused)."""
    b = torch.cat([torch.zeros(1, dtype=F64), betas.to(F64)])
    abar = torch.cumprod(1 - b, 0)
    tilde = torch.zeros_like(b)
    tilde[1:] = (1 - abar[:-1]) / (1 - abar[1:]) * b[1:]
    return b, abar, tilde


def _mean_se(v: torch.Tensor) -> tuple[float, float]:
    return float(v.mean()), float(v.std() / math.sqrt(v.numel()))


# ------------------------------------------------------------------------------------ 1. normal_kl
def test_normal_kl_matches_monte_carlo():
    """KL(q || p) = E_q[log q(x) - log p(x)] for q, p Gaussian (equal or unequal variances); the
    Monte Carlo mean of 200k draws agrees within 4 standard errors, and KL(q || q) = 0."""
    g = torch.Generator().manual_seed(0)
    pairs = [(0.3, -1.0, -0.5, 0.7), (-1.2, 0.5, 0.4, 0.5), (2.0, -3.0, 0.0, 0.0), (0.0, 1.5, 1.0, -0.8)]
    for m1, lv1, m2, lv2 in pairs:
        m1, lv1, m2, lv2 = (torch.tensor(v, dtype=F64) for v in (m1, lv1, m2, lv2))
        x = m1 + torch.exp(0.5 * lv1) * torch.randn(200_000, generator=g, dtype=F64)
        log_q = -0.5 * (math.log(2 * math.pi) + lv1 + (x - m1) ** 2 / lv1.exp())
        log_p = -0.5 * (math.log(2 * math.pi) + lv2 + (x - m2) ** 2 / lv2.exp())
        mc, se = _mean_se(log_q - log_p)
        kl = float(normal_kl(m1, lv1, m2, lv2))
        assert kl > 0 and abs(mc - kl) < 4 * se + 1e-12, (kl, mc, se)
    mean, logvar = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    assert torch.equal(normal_kl(mean, logvar, mean, logvar), torch.zeros(5, 3, dtype=F64))


# --------------------------------------------------------------------------- 2. discretized decoder
def _simpson_bin_masses(levels: torch.Tensor, mean: float, std: float, K: int, n: int = 20000) -> torch.Tensor:
    """Gaussian mass of each level's bin [x - 1/K, x + 1/K] (width w/K, w = 2; outer bins to +-inf)
    by Simpson's rule, the bins clipped to mean +- 40 std (the mass outside is < 1e-300)."""
    lo = levels - 1.0 / K
    hi = levels + 1.0 / K
    lo[0], hi[-1] = -math.inf, math.inf
    lo = lo.clamp(min=mean - 40 * std)
    hi = hi.clamp(max=mean + 40 * std)
    width = (hi - lo).clamp(min=0)
    u = torch.linspace(0, 1, n + 1, dtype=F64)
    x = lo[:, None] + width[:, None] * u[None]
    dens = torch.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
    w = torch.ones(n + 1, dtype=F64)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return (dens * w).sum(1) * width / (3 * n)


def _log_upper_tail(a: float) -> float:
    """log Phi(-a) for large a, by the asymptotic series (error < 1e-13 for a > 50)."""
    series = 1 - 1 / a**2 + 3 / a**4 - 15 / a**6 + 105 / a**8
    return -0.5 * a * a - math.log(a * math.sqrt(2 * math.pi)) + math.log(series)


@pytest.mark.parametrize("K", [17, 256])
def test_discretized_decoder_is_the_binned_gaussian(K):
    """P(level k) is the N(mean, var) mass of the bin centred on the level, edges at the midpoints,
    outer bins to +-inf: the K probabilities sum to 1 and each matches a Simpson integral of the
    density (rtol 1e-6), for tiny and huge variances and means outside [-1, 1]."""
    levels = -1.0 + 2.0 * torch.arange(K, dtype=F64) / K
    cases = [(0.1, 0.05), (0.3, 1e-3), (-0.4, 30.0), (1.7, 0.3), (-1.3, 0.02), (0.0, 1.0)]
    for mean, std in cases:
        log_p = discretized_gaussian_log_prob(levels, torch.full_like(levels, mean), torch.full_like(levels, 2 * math.log(std)), K)
        assert torch.isfinite(log_p).sum() >= 1 and not torch.isnan(log_p).any()
        assert abs(float(log_p.exp().sum()) - 1.0) < 1e-10, (mean, std)
        num = _simpson_bin_masses(levels, mean, std, K)
        assert abs(float(num.sum()) - 1.0) < 1e-9  # the oracle itself
        torch.testing.assert_close(log_p.exp(), num, rtol=1e-6, atol=1e-300)
        big = num > 1e-290
        torch.testing.assert_close(log_p[big], num[big].log(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("K", [17, 256])
def test_discretized_decoder_with_a_tiny_variance_far_from_an_outer_bin(K):
    """A tiny decoder variance (std 1e-4, mean 0.3) puts the lowest level's bin edge -1 + 1/K more than
    1e4 standard deviations below the mean: P(level 0) = Phi((-1 + 1/K - 0.3) / 1e-4), log P ~ -7.7e7,
    finite (log_ndtr is accurate there); every log P is finite or -inf, never NaN, and the masses sum to 1."""
    levels = -1.0 + 2.0 * torch.arange(K, dtype=F64) / K
    mean, std = 0.3, 1e-4
    log_p = discretized_gaussian_log_prob(levels, torch.full_like(levels, mean), torch.full_like(levels, 2 * math.log(std)), K)
    assert not torch.isnan(log_p).any(), log_p[:3]
    expected = torch.special.log_ndtr(torch.tensor((-1 + 1 / K - mean) / std, dtype=F64))
    torch.testing.assert_close(log_p[0], expected, rtol=1e-12, atol=0)
    assert abs(float(log_p.exp().sum()) - 1.0) < 1e-10


@pytest.mark.parametrize("K", [17, 256])
def test_discretized_decoder_far_tail_is_finite_and_accurate(K):
    """In the tails the mass is a difference of CDFs taken on the side where it does not cancel:
    against float64 CDF differences (via erfc) where those are accurate (std 0.1), and against the
    asymptotic series of log Phi(-a) where the mass underflows (std 0.01: log P ~ -3400, not -inf)."""
    top, second, first = 1 - 2 / K, 1 - 4 / K, -1 + 2 / K
    x = torch.tensor([top, second, first, -1.0], dtype=F64)
    # moderate tail: every mass is a few 1e-17 or less, computed without cancellation from ndtr
    std = 0.1
    log_p = discretized_gaussian_log_prob(x, torch.zeros_like(x), torch.full_like(x, 2 * math.log(std)), K)

    def nd(z):  # Phi(z) = erfc(-z / sqrt 2) / 2: relative-accurate in the lower tail (torch's ndtr is not)
        return 0.5 * torch.special.erfc(-z / math.sqrt(2))

    a_top, a_sec, b_sec = (1 - 3 / K) / std, (1 - 5 / K) / std, (1 - 3 / K) / std
    lo_first, hi_first, hi_low = (first - 1 / K) / std, (first + 1 / K) / std, (-1 + 1 / K) / std
    expected = torch.stack(
        [
            nd(torch.tensor(-a_top, dtype=F64)),
            nd(torch.tensor(-a_sec, dtype=F64)) - nd(torch.tensor(-b_sec, dtype=F64)),
            nd(torch.tensor(hi_first, dtype=F64)) - nd(torch.tensor(lo_first, dtype=F64)),
            nd(torch.tensor(hi_low, dtype=F64)),
        ]
    ).log()
    assert float(expected.max()) < -25  # genuinely in the tails
    torch.testing.assert_close(log_p, expected, rtol=1e-10, atol=0)
    # far tail: the masses underflow float64; their logs must not
    std = 0.01
    log_p = discretized_gaussian_log_prob(x[:2], torch.zeros(2, dtype=F64), torch.full((2,), 2 * math.log(std), dtype=F64), K)
    assert torch.isfinite(log_p).all()
    # the second level's far edge carries a relative exp(-(b^2 - a^2) / 2) < 1e-100 of the mass: negligible
    expected = torch.tensor([_log_upper_tail((1 - 3 / K) / std), _log_upper_tail((1 - 5 / K) / std)], dtype=F64)
    assert float(expected.max()) < -2000  # exp underflows below -745
    torch.testing.assert_close(log_p, expected, rtol=1e-12, atol=1e-9)


# ------------------------------------------------------------------------ 3. learned variances
class _ConstantR(nn.Module):
    """A 'network' whose output is eps = 0 and the variance channel r constant."""

    def __init__(self, r: float):
        super().__init__()
        self.r = r

    def forward(self, x, t):
        return torch.cat([torch.zeros_like(x), torch.full_like(x, self.r)], 1)


def test_learned_variance_interpolates_between_beta_and_beta_tilde():
    """v = (r + 1) / 2 and log sigma_i^2 = v log beta_i + (1 - v) log beta_tilde_i (Nichol & Dhariwal
    2021, Eq. 15): v = 1 gives beta_i at every step, v = 0 beta_tilde_i for i >= 2 and the clipped
    beta_tilde_2 at step 1; "large"/"small" are the fixed ends (with beta_tilde_2 at step 1 for both)."""
    sde = _chain_sde()
    chain = sde.discrete
    b, _, tilde = _tables(linear_betas(100, 2e-3, 0.2))
    small = tilde.clone()
    small[1] = tilde[2]
    steps = torch.tensor([1, 2, 3, 50, 99, 100])
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = steps.to(F64) / 100
    for r, v_expected in [(1.0, 1.0), (-1.0, 0.0), (0.0, 0.5), (0.4, 0.7)]:
        model = sd.LearnedVarianceParameterization(_ConstantR(r), sde)
        score, v = model(x, t, variance=True)
        assert torch.equal(score, torch.zeros_like(x))
        torch.testing.assert_close(v, torch.full_like(x, v_expected), rtol=0, atol=1e-15)
        log_var = chain.reverse_log_variance(steps, "learned", v)
        expected = v_expected * b[steps].log() + (1 - v_expected) * small[steps].log()
        torch.testing.assert_close(log_var, expected[:, None].expand_as(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(chain.reverse_log_variance(steps, "small"), small[steps].log(), rtol=1e-12, atol=0)
    large = torch.where(steps == 1, small[steps], b[steps])
    torch.testing.assert_close(chain.reverse_log_variance(steps, "large"), large.log(), rtol=1e-12, atol=0)
    # the networks that double their channels, and the error for one that does not
    mlp = sd.TimeMLP(data_shape=[3], learn_variance=True).double()
    assert mlp(x, t).shape == (6, 6)
    unet = sd.UNet(data_shape=[1, 8, 8], channels=8, channel_mult=[1, 2], n_res_blocks=1, learn_variance=True).double()
    img = torch.randn(2, 1, 8, 8, dtype=F64)
    assert unet(img, torch.tensor([0.5, 0.9], dtype=F64)).shape == (2, 2, 8, 8)
    with pytest.raises(ValueError, match="learn_variance"):
        sd.LearnedVarianceParameterization(sd.TimeMLP(data_shape=[3]).double(), sde)(x, t, variance=True)


# ------------------------------------------------------------------- 4. Bayes-optimal discrete VLB
class _BayesOptimal:
    """Exact score of the data's marginal (times ``scale``), and the variance interpolation ``v`` whose
    sigma_i^2 is the exact reverse variance Var(x_{i-1} | x_i) = V_{i-1} beta_i / ((1 - beta_i) V_{i-1} + beta_i),
    V_{i-1} = abar_{i-1} sig2 + 1 - abar_{i-1} (1-D Gaussian data N(0, sig2))."""

    def __init__(self, sde: DDPMSDE, sig2: float, scale: float = 1.0):
        chain = sde.discrete
        self.T = chain.T
        self.score = _normal1d(sig2).score_fn(sde)
        self.scale = scale
        i = torch.arange(1, self.T + 1)
        beta = chain.betas[i]
        V = chain.alpha_bars[i - 1] * sig2 + chain.one_minus_alpha_bars[i - 1]
        self.exact_var = V * beta / ((1 - beta) * V + beta)  # (T,), step i at index i - 1
        log_small = chain.reverse_log_variance(i, "small")
        self.v = (self.exact_var.log() - log_small) / (beta.log() - log_small)

    def __call__(self, x, t, variance=False):
        score = self.scale * self.score(x, t)
        if not variance:
            return score
        k = (t * self.T).round().long()
        return score, self.v[k - 1].to(x)[:, None].expand_as(x)


def test_bayes_optimal_discrete_vlb_is_entropy_plus_prior_kl():
    """With the exact reverse conditionals q(x_{i-1} | x_i) (exact mean from the exact score, exact
    variance through v), E[VLB] = H(data) + KL(q(x_T) || N(0, 1)) = 0.5 log(2 pi e sig2) + 0.5 (v_T - 1 - log v_T):
    the bound telescopes into -E log q(x_0) plus the prior mismatch. It is >= the exact NLL. A fixed
    variance sigma_i^2 costs exactly sum_i 0.5 (rho_i - 1 - log rho_i), rho_i = Var(x_{i-1}|x_i) / sigma_i^2,
    more (the KL between the two Gaussians of equal mean), measured on the same draws."""
    sde = _chain_sde()
    chain = sde.discrete
    model = _BayesOptimal(sde, SIG2)
    x0 = _normal1d(SIG2).sample(4000, generator=torch.Generator().manual_seed(0), dtype=F64)
    best = discrete_vlb(model, sde, x0, variance="learned", generator=torch.Generator().manual_seed(1))
    assert best.shape == (4000,) and best.dtype == F64
    v_T = float(chain.alpha_bars[-1]) * SIG2 + float(chain.one_minus_alpha_bars[-1])
    closed = 0.5 * math.log(2 * math.pi * math.e * SIG2) + 0.5 * (v_T - 1 - math.log(v_T))
    mean, se = _mean_se(best)
    assert abs(mean - closed) < 3 * se, (mean, se, closed)
    gap, gap_se = _mean_se(best + _normal1d(SIG2).log_prob(x0))
    assert gap > -3 * gap_se, (gap, gap_se)
    i = torch.arange(1, chain.T + 1)
    for variance in ("small", "large"):
        fixed = discrete_vlb(model, sde, x0, variance=variance, generator=torch.Generator().manual_seed(1))
        rho = model.exact_var / chain.reverse_log_variance(i, variance).exp()
        excess = float((0.5 * (rho - 1 - rho.log())).sum())
        diff, diff_se = _mean_se(fixed - best)
        assert abs(diff - excess) < 3 * diff_se, (variance, diff, diff_se, excess)
        assert diff > 6 * diff_se  # clearly worse than the Bayes-optimal variance


# -------------------------------------------------------------- 5. stratified VLB is unbiased
class _OffsetOracle:
    """A model that knows each row's x0 and predicts x0_hat = x0 + delta_i at step i: every VLB term
    is then deterministic, L_{i-1} = c0_i^2 delta_i^2 / (2 beta_tilde_i) for i >= 2 (variance "small")
    and L_0 = 0.5 log(2 pi sigma_1^2) + delta_1^2 / (2 sigma_1^2), c0_i = sqrt(abar_{i-1}) beta_i / (1 - abar_i).
    Records the steps of every call."""

    def __init__(self, sde: DDPMSDE, x0: torch.Tensor, delta: torch.Tensor):
        self.sde, self.x0, self.delta, self.T = sde, x0, delta, sde.discrete.T
        self.calls: list[torch.Tensor] = []

    def __call__(self, x, t):
        k = (t * self.T).round().long()
        self.calls.append(k)
        m, s = self.sde.kernel(t)
        x0_hat = self.x0 + self.delta[k - 1].to(x)[:, None]
        return (m[:, None] * x0_hat - x) / s[:, None] ** 2


def test_stratified_vlb_is_unbiased():
    """discrete_vlb(n_terms=n) is sum_j |S_j| L_{i_j} with i_j uniform in the j-th of n strata S_j of
    consecutive steps partitioning 1..T: E = sum_i L_{i-1} whatever the strata. With deterministic
    terms (an oracle off by a known delta_i): the full sum equals the closed form to 1e-9; for
    n = 7 and 10 the steps seen in call j form contiguous strata covering 1..T, are uniform within
    them, every row's estimate is exactly sum_j |S_j| L_{i_j}, and the mean over 20000 draws equals
    sum_i L_{i-1} within 4 standard errors; n = T is the full sum exactly."""
    sde = _chain_sde()
    b, abar, tilde = _tables(linear_betas(100, 2e-3, 0.2))
    T, R = 100, 20000
    i = torch.arange(1, T + 1)
    delta = 0.05 + 0.02 * torch.sin(0.37 * i.to(F64)) + 0.001 * i.to(F64)  # terms that vary with i
    c0 = abar[i - 1].sqrt() * b[i] / (1 - abar[i])
    sig2_1 = float(tilde[2])  # the clipped small variance at step 1
    L = 0.5 * c0**2 * delta**2 / tilde[i]
    L[0] = 0.5 * math.log(2 * math.pi * sig2_1) + 0.5 * float(delta[0]) ** 2 / sig2_1
    x0 = torch.tensor([[0.3], [-0.7]], dtype=F64)
    prior = 0.5 * (abar[T] * x0[:, 0] ** 2 + (1 - abar[T]) - 1 - torch.log(1 - abar[T]))
    exact = prior + L.sum()
    full = discrete_vlb(_OffsetOracle(sde, x0, delta), sde, x0, variance="small", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(full, exact, rtol=1e-9, atol=1e-9)
    xr = x0.repeat(R // 2, 1)
    prior_r = prior.repeat(R // 2)
    for n in (7, 10):
        oracle = _OffsetOracle(sde, xr, delta)
        est = discrete_vlb(oracle, sde, xr, variance="small", n_terms=n, generator=torch.Generator().manual_seed(n))
        assert len(oracle.calls) == n
        lows = [int(k.min()) for k in oracle.calls]
        highs = [int(k.max()) for k in oracle.calls]
        assert lows[0] == 1 and highs[-1] == T and all(lows[j + 1] == highs[j] + 1 for j in range(n - 1)), (lows, highs)
        sizes = torch.tensor([h - lo + 1 for lo, h in zip(lows, highs, strict=True)], dtype=F64)
        assert sizes.min() < sizes.max()  # unequal strata
        for k, lo, size in zip(oracle.calls, lows, sizes.long().tolist(), strict=True):
            freq = torch.bincount(k - lo, minlength=size).to(F64) / R
            assert ((freq - 1 / size).abs() <= 5 * math.sqrt((1 / size) * (1 - 1 / size) / R) + 1e-15).all()
        drawn = torch.stack(oracle.calls, 1)  # (R, n)
        torch.testing.assert_close(est, prior_r + (sizes * L[drawn - 1]).sum(1), rtol=1e-9, atol=1e-9)
        mean, se = _mean_se(est - prior_r)
        assert abs(mean - float(L.sum())) < 4 * se, (n, mean, se, float(L.sum()))
    exact_T = discrete_vlb(
        _OffsetOracle(sde, xr[:4], delta), sde, xr[:4], variance="small", n_terms=T, generator=torch.Generator().manual_seed(5)
    )
    torch.testing.assert_close(exact_T, exact.repeat(2), rtol=1e-9, atol=1e-9)


def test_stratified_vlb_matches_the_full_sum_for_an_imperfect_model():
    """For a score-based model (exact score x 0.9, variance "small"; terms random through x_i) the
    stratified estimate and the full sum have the same mean over many seeds (one repeated batch),
    within 4 combined standard errors, for n = 7 (unequal strata) and n = 10."""
    sde = _chain_sde()
    model = _BayesOptimal(sde, SIG2, scale=0.9)
    x0 = _normal1d(SIG2).sample(20, generator=torch.Generator().manual_seed(0), dtype=F64).repeat(500, 1)
    full = discrete_vlb(model, sde, x0, variance="small", generator=torch.Generator().manual_seed(1))
    m_full, se_full = _mean_se(full)
    for n in (7, 10):
        est = discrete_vlb(model, sde, x0, variance="small", n_terms=n, generator=torch.Generator().manual_seed(2 + n))
        m, se = _mean_se(est)
        assert abs(m - m_full) < 4 * math.hypot(se, se_full), (n, m, se, m_full, se_full)


# ---------------------------------------------------------------------- 6. continuous ELBO
def test_continuous_elbo_on_gaussian_data_has_its_closed_form():
    """With the exact score, E_data[ELBO] = E[decoder] + I(x; x_eps) + KL(p_T || N(0, 1)) =
    h(x + sqrt(r) n) + KL_T = 0.5 log(2 pi e (sig2 + r)) + KL(N(0, m_T^2 sig2 + s_T^2) || N(0, 1)),
    r = s(eps)^2 / m(eps)^2 (the diffusion term is I(x; x_eps) - I(x; x_T) by I-MMSE). The bound is
    tight when the score is exact, the prior equals p_T and s(eps)/m(eps) -> 0: at eps = 0.3 the gap
    0.5 log(1 + r / sig2) ~ 0.9 nats is there, at eps = 1e-3 the ELBO is the data entropy."""
    sde = sd.VPSDE()
    dist = _normal1d(SIG2)
    x = dist.sample(20000, generator=torch.Generator().manual_seed(0), dtype=F64)
    entropy = 0.5 * math.log(2 * math.pi * math.e * SIG2)
    for eps in (0.3, 1e-3):
        elbo = continuous_elbo(dist.score_fn(sde), sde, x, eps=eps, n_time_samples=32, generator=torch.Generator().manual_seed(1))
        (m, m_T), (s, s_T) = sde.kernel(torch.tensor([eps, sde.T], dtype=F64))
        r, v_T = float(s**2 / m**2), float(m_T**2 * SIG2 + s_T**2)
        closed = 0.5 * math.log(2 * math.pi * math.e * (SIG2 + r)) + 0.5 * (v_T - 1 - math.log(v_T))
        mean, se = _mean_se(elbo)
        assert abs(mean - closed) < 3 * se, (eps, mean, se, closed)
        if eps == 0.3:
            assert closed - entropy > 0.5 and mean - entropy > 50 * se
        else:
            assert abs(mean - entropy) < 3 * se


def test_continuous_elbo_bounds_a_mixture_and_is_tight_for_the_exact_score():
    """On a 2-D Gaussian mixture at eps = 1e-3: E[ELBO] >= E[-log p] (a bound) and, with the exact
    score, within 0.05 nats of it (tight: exact score, p_T ~ N(0, I), s/m ~ 0.01); a wrong score (half
    the exact one, or another mixture's) makes it larger by many standard errors."""
    sde = sd.VPSDE()
    dist = mixture(2)
    x = dist.sample(10000, generator=torch.Generator().manual_seed(0), dtype=F64)
    nll = -dist.log_prob(x)
    elbo = continuous_elbo(dist.score_fn(sde), sde, x, eps=1e-3, n_time_samples=32, generator=torch.Generator().manual_seed(1))
    gap, se = _mean_se(elbo - nll)
    assert -3 * se < gap < 0.05, (gap, se)
    wrong = {"half": lambda x, t: 0.5 * dist.score(x, t, sde), "other": mixture(2, seed=1).score_fn(sde)}
    for name, score in wrong.items():
        bad = continuous_elbo(score, sde, x[:4000], eps=1e-3, n_time_samples=16, generator=torch.Generator().manual_seed(1))
        bad_gap, bad_se = _mean_se(bad - nll[:4000])
        assert bad_gap > 1.0 and bad_gap > 20 * bad_se, (name, bad_gap, bad_se)


# -------------------------------------------------------------------------- 7. discrete data
def test_discrete_vlb_bounds_the_entropy_of_discrete_data():
    """On data on the 17 levels -1 + 2k/17, the bound with levels=17 is on -log P of the discrete data:
    E[bound] >= E[-log P_model] >= H(levels) (a cross-entropy), and every draw is >= 0 (its terms are
    KLs and -log P of a probability), here with a near-exact model (the score of narrow Gaussians on
    the levels). The decoder term alone, with its mean exactly at x0 (eps = the true noise at step 1,
    where mu_1 = x0_hat) and a tiny variance, is -log P = 0 (P -> 1); with levels=None it is the
    Gaussian density's 0.5 log(2 pi sigma^2) per dimension."""
    K = 17
    sde = _chain_sde()
    chain = sde.discrete
    levels = -1.0 + 2.0 * torch.arange(K, dtype=F64) / K
    weights = torch.linspace(1.0, 3.0, K, dtype=F64)
    p = weights / weights.sum()
    entropy = float(-(p * p.log()).sum())
    narrow = sd.GaussianMixture(weights, levels[:, None], torch.full((K,), 1e-3, dtype=F64))
    g = torch.Generator().manual_seed(0)
    x0 = levels[torch.multinomial(p, 3000, replacement=True, generator=g)][:, None]
    bound = discrete_vlb(narrow.score_fn(sde), sde, x0, variance="small", levels=K, generator=g)
    mean, se = _mean_se(bound)
    assert mean > entropy - 3 * se, (mean, se, entropy)
    assert float(bound.min()) > -1e-12  # every term is a KL or -log P <= 1: each estimate is >= 0
    # the decoder at step 1
    B, D = 8, 3
    x0 = levels[torch.randint(0, K, (B, D), generator=g)]
    z = torch.randn(B, D, generator=g, dtype=F64)
    one = torch.ones(B, dtype=torch.long)
    x1 = chain.alpha_bars[1].sqrt() * x0 + chain.one_minus_alpha_bars[1].sqrt() * z
    tiny = torch.full((B,), math.log(1e-10), dtype=F64)
    discrete = step_terms(chain, x0, x1, one, z, tiny, levels=K)
    assert discrete.abs().max() < 1e-12
    gaussian_nll = step_terms(chain, x0, x1, one, z, tiny)
    torch.testing.assert_close(gaussian_nll, torch.full((B,), 0.5 * D * math.log(2 * math.pi * 1e-10), dtype=F64), rtol=1e-9, atol=0)


# ----------------------------------------------------------------------------- 8. hybrid loss
def _learned_mlp(sde, seed=0):
    torch.manual_seed(seed)
    net = sd.TimeMLP([2], hidden_dim=32, n_layers=2, learn_variance=True).double()
    with torch.no_grad():  # a non-trivial output layer (it starts at zero)
        g = torch.Generator().manual_seed(seed + 1)
        net.out.weight.copy_(0.3 * torch.randn(net.out.weight.shape, generator=g, dtype=F64))
        net.out.bias.copy_(0.3 * torch.randn(net.out.bias.shape, generator=g, dtype=F64))
    return net, sd.LearnedVarianceParameterization(net, sde)


def test_hybrid_loss_value_and_its_stop_gradient():
    """L_hybrid = mean_d (eps - eps_theta)^2 + lambda T L_{i-1} / (D ln 2) per sample (uniform steps,
    weight 1), L_{i-1} the Gaussian KL to the posterior (decoder NLL at i = 1) in closed form; the mean
    in L_vlb has a stopped gradient, so the eps rows of the output layer get the same gradient for
    lambda = 0 and 0.001, and the v rows get a gradient only from L_vlb."""
    sde = _chain_sde(50, 1e-3, 0.2)
    b, abar, tilde = _tables(linear_betas(50, 1e-3, 0.2))
    T, B, D = 50, 64, 2
    net, model = _learned_mlp(sde)
    x0 = torch.randn(B, D, generator=torch.Generator().manual_seed(3), dtype=F64)
    # the closed form, with the loss's own draws (steps, then noise)
    lam = 0.001
    g = torch.Generator().manual_seed(7)
    i = torch.randint(1, T + 1, (B,), generator=g)
    z = torch.randn(x0.shape, generator=g, dtype=F64)
    with torch.no_grad():
        a, u = abar[i][:, None], (1 - abar[i])[:, None]
        x_i = a.sqrt() * x0 + u.sqrt() * z
        score, v = model(x_i, i.to(F64) / T, variance=True)
        eps = -u.sqrt() * score
        x0_hat = (x_i - u.sqrt() * eps) / a.sqrt()
        a_prev, beta = abar[i - 1][:, None], b[i][:, None]
        c0, ci = a_prev.sqrt() * beta / u, (1 - beta).sqrt() * (1 - a_prev) / u
        mu_theta, mu_true = c0 * x0_hat + ci * x_i, c0 * x0 + ci * x_i
        small = torch.where(i == 1, tilde[2], tilde[i])[:, None]
        var = torch.exp(v * beta.log() + (1 - v) * small.log())
        kl = 0.5 * (var.log() - small.log() - 1 + small / var + (mu_true - mu_theta) ** 2 / var)
        nll = 0.5 * (math.log(2 * math.pi) + var.log() + (x0 - mu_theta) ** 2 / var)
        L = torch.where((i == 1)[:, None], nll, kl).sum(1)
        expected = (eps - z).pow(2).mean(1) + lam * T * L / (D * math.log(2))
    assert (i == 1).any() and (i > 1).any()
    value = HybridLoss(vlb_weight=lam)(model, sde, x0, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(value.detach(), expected, rtol=1e-9, atol=1e-12)
    # gradients
    grads = {}
    for weight in (0.0, 0.001):
        net.zero_grad()
        HybridLoss(vlb_weight=weight)(model, sde, x0, generator=torch.Generator().manual_seed(11)).mean().backward()
        grads[weight] = net.out.weight.grad.clone()
    torch.testing.assert_close(grads[0.0][:2], grads[0.001][:2], rtol=1e-12, atol=1e-15)
    assert grads[0.0][:2].abs().max() > 1e-3
    assert torch.equal(grads[0.0][2:], torch.zeros_like(grads[0.0][2:]))
    assert grads[0.001][2:].abs().max() > 1e-6


# ---------------------------------------------------------------- 9. loss-aware step sampling
def test_loss_aware_sampler_probabilities_frequencies_and_weights():
    """p(i) is uniform until every step has `history` losses, then (1 - mix) sqrt(mean L_i^2) / sum
    + mix / T over the last `history` values; drawn steps have those frequencies, their weights are
    1 / (T p(i)) so E[w] = sum_i p_i / (T p_i) = 1; state_dict round-trips the draws."""
    T, H, mix = 12, 5, 0.05
    sampler = LossAwareStepSampler(history=H, uniform_mix=mix)
    uniform = torch.full((T,), 1 / T, dtype=F64)
    assert torch.equal(sampler.probabilities(T), uniform)
    steps = torch.arange(1, T + 1)
    scale = torch.tensor([3.0, 1.0, 2.0, 5.0, 4.0, 1.5, 0.5], dtype=F64)
    rounds = len(scale)  # 7 rounds; only each step's last H = 5 count
    values = steps.to(F64)[None] * scale[(torch.arange(rounds)[:, None] + steps[None]) % rounds]  # (rounds, T)
    for k in range(rounds):
        if k == H - 1:
            sampler.update(steps[1:], values[k, 1:])
            assert torch.equal(sampler.probabilities(T), uniform)  # step 1 has only H - 1 values
            sampler.update(steps[:1], values[k, :1])
        else:
            sampler.update(steps, values[k])
        if k < H - 1:
            assert torch.equal(sampler.probabilities(T), uniform)
    rms = values[-H:].pow(2).mean(0).sqrt()
    expected = (1 - mix) * rms / rms.sum() + mix / T
    p = sampler.probabilities(T)
    torch.testing.assert_close(p, expected, rtol=1e-12, atol=0)
    N = 200_000
    drawn, w = sampler.sample(T, N, generator=torch.Generator().manual_seed(0))
    assert drawn.min() >= 1 and drawn.max() <= T
    torch.testing.assert_close(w, 1 / (T * p[drawn - 1]), rtol=1e-12, atol=0)
    freq = torch.bincount(drawn - 1, minlength=T).to(F64) / N
    assert ((freq - p).abs() / (p * (1 - p) / N).sqrt()).max() < 4.5
    mean_w, se_w = _mean_se(w)
    assert abs(mean_w - 1) < 4 * se_w, (mean_w, se_w)
    # state round trip
    twin = LossAwareStepSampler(history=H, uniform_mix=mix)
    twin.load_state_dict({k: v.clone() for k, v in sampler.state_dict().items()})
    a, _ = sampler.sample(T, 500, generator=torch.Generator().manual_seed(3))
    b, _ = twin.sample(T, 500, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # a step drawn many times in one batch keeps its last H values, in batch order
    fresh = LossAwareStepSampler(history=H)
    fresh.probabilities(T)
    fresh.update(torch.full((23,), 4), torch.arange(23, dtype=F64))
    assert sorted(fresh.losses[3].tolist()) == [18.0, 19.0, 20.0, 21.0, 22.0] and int(fresh.seen[3]) == 23
    fresh.update(torch.tensor([4, 4]), torch.tensor([100.0, 101.0], dtype=F64))
    assert sorted(fresh.losses[3].tolist()) == [20.0, 21.0, 22.0, 100.0, 101.0]


# --------------------------------------------------------------------------- 10. DDPM sampler
class _FakeLearned:
    """The exact score with a constant variance interpolation v."""

    def __init__(self, score, v: float):
        self.score, self.v = score, v

    def __call__(self, x, t, variance=False):
        s = self.score(x, t)
        return (s, torch.full_like(x, self.v)) if variance else s


def _chain_law(dist, chain, n_steps, variance):
    """Exact mean and covariance of DDPM's K-step ancestral chain on Gaussian data N(mu, S) with the
    exact score: x ~ N(0, I) at kept step K; x_{k-1} = mu~(x0_hat, x_k) + sigma_k z with the respaced
    chain's posterior (Ho et al. 2020, Eq. 7) and x0_hat = E[x0 | x_k] (linear); then x0_hat at step 1."""
    short = chain.evenly_spaced(n_steps)
    mu, S = dist.mean(), dist.covariance()
    eye = torch.eye(len(mu), dtype=F64)
    abar, beta = short.alpha_bars, short.betas

    def tweedie(k):  # x0_hat = mu + G (x - sqrt(abar) mu)
        return abar[k].sqrt() * S @ torch.linalg.inv(abar[k] * S + (1 - abar[k]) * eye)

    mean, cov = torch.zeros_like(mu), eye.clone()
    for k in range(n_steps, 1, -1):
        c0 = abar[k - 1].sqrt() * beta[k] / (1 - abar[k])
        ci = (1 - beta[k]).sqrt() * (1 - abar[k - 1]) / (1 - abar[k])
        var = beta[k] if variance == "large" else (1 - abar[k - 1]) / (1 - abar[k]) * beta[k]
        G = tweedie(k)
        A = ci * eye + c0 * G
        mean = A @ mean + c0 * (mu - G @ (abar[k].sqrt() * mu))
        cov = A @ cov @ A.T + var * eye
    G = tweedie(1)
    return mu + G @ (mean - abar[1].sqrt() * mu), G @ cov @ G.T


def test_ddpm_sampler_draws_its_chain_law_and_the_data():
    """On N(mu, S) with the exact score the sampler is a linear-Gaussian chain whose output law is
    computable: the samples' mean and covariance match it (within ~6 standard errors), and land on
    the data (mean within 0.05, covariance within 0.05 for "large"; "small" under-disperses on 100
    strided steps: its exact chain law is 0.06 off, so within 0.1). NFE = n_steps; a learned
    variance v = 1 draws exactly "large"'s samples and v = 0 exactly "small"'s."""
    sde = sd.DDPMSDE("linear")
    dist = gaussian(2)
    score = dist.score_fn(sde)
    ts = sd.discrete_time_grid(sde, 100, dtype=F64)
    N = 20000
    x = torch.randn(N, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    for variance, data_tol in (("large", 0.05), ("small", 0.1)):
        out = sd.ddpm(sde, score, x, ts, variance=variance, generator=torch.Generator().manual_seed(1))
        assert out.nfe == 100
        law_mean, law_cov = _chain_law(dist, sde.discrete, 100, variance)
        s = out.samples
        cov = torch.cov(s.T)
        se_mean = (law_cov.diagonal() / N).sqrt()
        se_cov = ((law_cov.diagonal()[:, None] * law_cov.diagonal()[None, :] + law_cov**2) / N).sqrt()
        assert ((s.mean(0) - law_mean).abs() / se_mean).max() < 6
        assert ((cov - law_cov).abs() / se_cov).max() < 6
        assert (s.mean(0) - dist.mean()).abs().max() < 0.05
        assert (cov - dist.covariance()).abs().max() < data_tol
        assert (law_cov - dist.covariance()).abs().max() < data_tol
    n = 256
    for v, fixed in ((1.0, "large"), (0.0, "small")):
        ref = sd.ddpm(sde, score, x[:n], ts, variance=fixed, generator=PerSampleNoise(5, torch.arange(n)))
        got = sd.ddpm(sde, _FakeLearned(score, v), x[:n], ts, variance="learned", generator=PerSampleNoise(5, torch.arange(n)))
        assert got.nfe == ref.nfe == 100
        torch.testing.assert_close(got.samples, ref.samples, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- 11. the time grid
def test_discrete_time_grid_is_the_strided_chain():
    """discrete_time_grid(sde, n) = i_k / T for the n steps spread evenly over 1..T (both ends kept,
    i_k = round(1 + k (T - 1) / (n - 1))), decreasing from 1 to 1/T; an SDE without a chain is refused."""
    sde = sd.DDPMSDE("linear")
    T = sde.discrete.T
    for n in (2, 7, 100, 1000):
        ts = sd.discrete_time_grid(sde, n, dtype=F64)
        assert ts.shape == (n,) and float(ts[0]) == 1.0 and float(ts[-1]) == 1 / T
        assert (ts[1:] < ts[:-1]).all()
        kept = torch.tensor([round(1 + k * (T - 1) / (n - 1)) for k in range(n)], dtype=F64)
        torch.testing.assert_close(ts, (kept / T).flip(0), rtol=0, atol=1e-15)
        torch.testing.assert_close(ts, sde.discrete.evenly_spaced(n).timesteps[1:].flip(0).to(F64) / T, rtol=0, atol=0)
    with pytest.raises(ValueError, match="discrete"):
        sd.discrete_time_grid(sd.VPSDE(), 10)
