"""Variational upper bounds on the negative log-likelihood, per point, in nats: DDPM's discrete VLB
and the continuous-time ELBO. They bound the NLL of the diffusion model itself (the reverse chain,
the reverse SDE), not that of the probability-flow ODE's density, a different model with the same
score whose exact NLL :func:`~sde_diffusion.likelihood.log_likelihood` gives: neither bounds the
other (Song, Durkan, Murray & Ermon 2021, Thm. 1 and Sec. 4). Both need no ODE solve; :func:`~sde_diffusion.likelihood.evaluate_nll`
turns them into bits/dim with standard errors (``bound="vlb"``, ``"elbo"``).

- :func:`discrete_vlb`: ``L_T + sum_{i=1}^T L_{i-1}`` of a discrete-time SDE's chain (Ho et al. 2020,
  Eq. 5; the terms of :mod:`sde_diffusion.losses.vlb`), over all ``T`` steps (``T`` network calls per
  point) or as an unbiased stratified estimate from ``n_terms`` of them.
- :func:`continuous_elbo`: the continuous-time bound of Kingma et al. 2021 (VDM, Eq. 17 and App. E),
  which equals the likelihood-weighted score-matching bound of Song, Durkan, Murray & Ermon 2021
  (Thm. 1) written with the kernel: for ``x`` in ``R^D`` and any kernel SDE,

      -log p(x) <= D/2 log(2 pi e s_eps^2 / m_eps^2)                 (Gaussian decoder at eps)
                   + KL(N(m_T x, s_T^2 I) || prior)                     (prior)
                   + 1/2 int_eps^T (-d logSNR/dt) E_z || eps_theta(x_t, t) - z ||^2 dt,

  ``x_t = m_t x + s_t z``. The model is the continuous-time limit of ancestral sampling from the
  prior down to ``eps`` followed by the decoder ``N(x; x_eps / m_eps, s_eps^2 / m_eps^2 I)``; the
  integral is estimated with ``t`` drawn uniformly in log-SNR (``p(t) ∝ -d logSNR/dt``, the weight
  is then the constant ``Z / 2``, ``Z = logSNR(eps) - logSNR(T)``), stratified over ``n_time_samples``
  quantiles. For data on ``K`` levels the decoder can be discretized instead (Kingma et al. 2021,
  Eq. 12), bounding ``-log P(x)`` directly. Tight when the score is exact, the prior equals ``p_T`` and ``s_eps -> 0``: the gap is
  ``KL(q(x_eps | x) || p(x_eps | x)) + KL(p_T || prior)`` in expectation, which vanishes in that limit.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_range
from .._shapes import expand_like, flat_dim
from ..losses.proposals import discrete_chain
from ..losses.vlb import VARIANCES, discretized_gaussian_log_prob, model_prediction, prior_term, step_terms
from ..sdes.base import SDE
from ..types import ScoreFn


def _stratified_uniform(n_points: int, n: int, generator, device) -> Tensor:
    """``(n_points, n)`` float64 in ``[0, 1)``: one uniform draw in each of ``n`` equal strata."""
    u = torch.rand(n_points, n, generator=generator, device=device, dtype=torch.float64)
    return (torch.arange(n, device=device, dtype=torch.float64) + u) / n


def _geometric_edges(T: int, n: int) -> Tensor:
    """``n + 1`` increasing integer edges from 0 to ``T``, as close to ``T^(j / n)`` as distinct
    integers allow: the first steps, whose terms (the decoder and the low-noise KLs) vary most, get
    strata of their own, the many quiet high-noise steps share the wide ones."""
    edges = [0]
    for j in range(1, n + 1):
        edges.append(max(edges[-1] + 1, min(round(T ** (j / n)), T - (n - j))))
    return torch.tensor(edges)


@torch.no_grad()
def discrete_vlb(
    score_fn: ScoreFn,
    sde: SDE,
    x0: Tensor,
    *,
    variance: str = "small",
    levels: int | None = None,
    interval: tuple[float, float] = (-1.0, 1.0),
    n_terms: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DDPM's variational bound ``-log p(x0) <= L_T + sum_{i=1}^T L_{i-1}`` per point ``(B,)``, nats.

    Args:
        score_fn, sde: the model on a discrete-time SDE (``sde.discrete``, a ``DDPMSDE``); the
            network is evaluated at the steps' times ``i / T``.
        x0: ``(B, *dims)`` data.
        variance: the reverse steps' variance: ``"small"`` (``beta_tilde``), ``"large"`` (``beta``)
            or ``"learned"`` (a learned-variance model).
        levels, interval: data on ``K`` levels of ``interval`` (the convention of
            :mod:`sde_diffusion.data`): ``L_0`` is the discretized decoder's ``-log P``, so the bound
            is on ``-log P(x0)`` of the discrete data; None: continuous data, a Gaussian decoder.
        n_terms: None sums all ``T`` terms, each from one draw of ``x_i``; an integer ``n`` splits
            ``1..T`` into ``n`` strata of consecutive steps growing geometrically (the first steps,
            whose terms vary most, alone), draws one step uniformly in each and sums
            ``|stratum| L_{i-1}`` over them: an unbiased estimate of the same sum from ``n`` calls.
        generator: for the steps and the noise.
    """
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    chain = discrete_chain(sde, "the discrete VLB (bound=vlb)")
    T, batch = chain.T, x0.shape[0]
    if n_terms is None:
        steps = torch.arange(1, T + 1, device=x0.device).expand(batch, T)
        weights = torch.ones(T, dtype=torch.float64, device=x0.device)
    else:
        n = check_range("n_terms", n_terms, low=1, high=T, integer=True, hint="None sums all T terms")
        edges = _geometric_edges(T, n).to(x0.device)  # stratum j: steps edges[j] + 1 .. edges[j + 1]
        weights = (edges[1:] - edges[:-1]).to(torch.float64)  # its size (>= 1 since n <= T)
        u = torch.rand(batch, n, generator=generator, device=x0.device, dtype=torch.float64)
        steps = torch.minimum(edges[:-1] + 1 + (u * weights).floor().long(), edges[1:])
    total = prior_term(chain, x0).to(torch.float64)
    for j in range(steps.shape[1]):
        i = steps[:, j].contiguous()
        t = i.to(x0.dtype) / T
        m, s = sde.kernel(t)
        x_i = expand_like(m, x0) * x0 + expand_like(s, x0) * torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        eps, v = model_prediction(score_fn, sde, x_i, t, variance)
        log_var = chain.reverse_log_variance(i, variance, v)
        term = step_terms(chain, x0, x_i, i, eps, log_var, levels, interval).to(torch.float64)
        total = total + weights[j] * term
    return total


@torch.no_grad()
def continuous_elbo(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    *,
    eps: float = 1e-5,
    n_time_samples: int = 16,
    levels: int | None = None,
    interval: tuple[float, float] = (-1.0, 1.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """The continuous-time ELBO (module docstring): an upper bound on ``-log p(x)`` per point ``(B,)``,
    nats, for any SDE with a kernel.

    ``x`` ``(B, *dims)``: continuous data (or dequantized discrete data) with the Gaussian decoder; or,
    with ``levels``, data on ``K`` levels of ``interval`` (the convention of :mod:`sde_diffusion.data`)
    with the decoder ``N(x_eps / m_eps, s_eps^2 / m_eps^2)`` discretized to the levels (Kingma et al.
    2021, Eq. 12), one draw of ``x_eps`` per point: a bound on ``-log P(x)`` of the discrete data. A
    model trained on discrete data learns to snap ``x_t`` to the levels at small noise, so on
    dequantized inputs its bound is much looser than with the discrete decoder.
    ``eps``: the decoder's time (the lower end of the integral); ``n_time_samples``: network calls per
    point, at stratified quantiles of ``p(t) ∝ -d logSNR/dt`` on ``[eps, T]``.
    """
    if not sde.has_kernel:
        raise ValueError(f"the continuous ELBO needs the SDE's kernel, which {type(sde).__name__} lacks; use bound=ode")
    check_range("n_time_samples", n_time_samples, low=0, low_open=True, integer=True)
    check_range("eps", eps, low=0, high=sde.T, low_open=True, high_open=True, hint="the decoder's time, between 0 and the SDE's T")
    batch, dim = x.shape[0], flat_dim(x)
    ends = torch.tensor([eps, sde.T], dtype=torch.float64)
    (m_eps, m_T), (s_eps, s_T) = sde.kernel(ends)
    log_snr_eps, log_snr_T = sde.log_snr(ends)
    Z = float(log_snr_eps - log_snr_T)
    decoder: float | Tensor
    if levels is None:
        decoder = 0.5 * dim * (math.log(2 * math.pi * math.e) + 2.0 * math.log(float(s_eps / m_eps)))
    else:
        x_eps = float(m_eps) * x + float(s_eps) * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        log_var = torch.full_like(x, 2.0 * math.log(float(s_eps / m_eps)))
        decoder = -discretized_gaussian_log_prob(x, x_eps / float(m_eps), log_var, levels, interval).reshape(batch, -1).sum(1).double()
    x_T = float(m_T) * x + float(s_T) * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    prior = -sde.prior_logp(x_T).to(torch.float64) - 0.5 * dim * (math.log(2 * math.pi * math.e) + 2.0 * math.log(float(s_T)))
    u = _stratified_uniform(batch, int(n_time_samples), generator, x.device)
    times = sde.time_from_log_snr(log_snr_eps.to(x.device) - u * Z, eps)  # (B, n) float64
    diffusion = torch.zeros(batch, dtype=torch.float64, device=x.device)
    for j in range(times.shape[1]):
        t = times[:, j].to(x.dtype)
        m, s = sde.kernel(t)
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_t = expand_like(m, x) * x + expand_like(s, x) * z
        eps_hat, _ = model_prediction(score_fn, sde, x_t, t, "small")
        diffusion += (eps_hat - z).pow(2).reshape(batch, -1).sum(dim=1).to(torch.float64)
    return decoder + prior + 0.5 * Z * diffusion / times.shape[1]
