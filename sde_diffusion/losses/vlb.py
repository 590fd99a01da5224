"""The terms of DDPM's variational bound (Ho et al. 2020, Eq. 5; Nichol & Dhariwal 2021, Sec. 3.1).

``-log p(x_0) <= L_T + sum_{i=2}^T L_{i-1} + L_0`` with

- ``L_T = KL(q(x_T | x_0) || N(0, I))``, the prior term (no network);
- ``L_{i-1} = KL(q(x_{i-1} | x_i, x_0) || p_theta(x_{i-1} | x_i))``, two Gaussians, in closed form
  (:func:`normal_kl`);
- ``L_0 = -log p_theta(x_0 | x_1)``: for data on ``K`` levels the discretized Gaussian decoder
  (:func:`discretized_gaussian_log_prob`), else the Gaussian density.

``p_theta(x_{i-1} | x_i) = N(mu_theta, sigma_i^2)`` has the posterior mean at the model's
``x0_hat = (x_i - sqrt(1 - abar_i) eps_theta) / sqrt(abar_i)`` and a fixed or learned variance
(:meth:`~sde_diffusion.sdes.DiscreteSchedule.reverse_log_variance`). All values are in nats.
Shared by the hybrid training loss (:mod:`sde_diffusion.losses.ddpm`) and the bound of a trained model
(:func:`~sde_diffusion.likelihood.discrete_vlb`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._shapes import batch_time, expand_like
from ..sdes.base import SDE
from ..sdes.discrete import DiscreteSchedule

VARIANCES = ("large", "small", "learned")


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """``KL(N(mean1, e^logvar1) || N(mean2, e^logvar2))`` per element (broadcast), in nats."""
    return 0.5 * (logvar2 - logvar1 - 1.0 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _log1mexp(a: Tensor) -> Tensor:
    """``log(1 - exp(a))`` for ``a < 0``, accurate at both ends (Maechler 2012), finite with finite
    gradients everywhere: ``a`` is capped at -1e-30 (a mass that rounds to zero counts as 1e-30 of
    its CDF, which only loosens the bound) and each branch of the ``where`` sees only inputs it can
    take, so the branch not taken cannot put ``0 * inf = NaN`` into the gradient."""
    a = a.clamp(max=-1e-30)
    near_zero = a > -math.log(2.0)
    return torch.where(
        near_zero,
        torch.log(-torch.expm1(torch.where(near_zero, a, -1.0))),
        torch.log1p(-torch.exp(torch.where(near_zero, -1.0, a))),
    )


def discretized_gaussian_log_prob(
    x: Tensor, mean: Tensor, log_var: Tensor, levels: int, interval: tuple[float, float] = (-1.0, 1.0)
) -> Tensor:
    """``log P(x)`` per element under ``N(mean, e^log_var)`` discretized to ``K = levels`` values.

    The values are the data's levels ``low + k w / K`` (``k = 0 .. K - 1``, ``w = high - low``; the
    convention of :mod:`sde_diffusion.data`). Level ``k`` gets the Gaussian mass between the midpoints
    to its neighbours, the lowest level everything below and the highest everything above, so the
    ``K`` probabilities sum to 1 (Ho et al. 2020, Eq. 13, with the bins centred on the levels). Each
    mass is a difference of normal CDFs taken on the side of the mean where it does not cancel,
    computed in float64 (returned in ``x``'s dtype); gradients are finite for every input.
    """
    dtype = x.dtype
    x, mean, log_var = x.double(), mean.double(), log_var.double()
    low, high = (float(v) for v in interval)
    step = (high - low) / levels
    k = ((x - low) / step).round().clamp(0, levels - 1)
    centre = low + k * step  # the level itself in float64: float32 data are off by ~1e-8, and so would the bins be
    std = torch.exp(0.5 * log_var)
    lo, hi = (centre - 0.5 * step - mean) / std, (centre + 0.5 * step - mean) / std  # standardised bin edges
    left = torch.special.log_ndtr(hi) + _log1mexp(torch.special.log_ndtr(lo) - torch.special.log_ndtr(hi))
    right = torch.special.log_ndtr(-lo) + _log1mexp(torch.special.log_ndtr(-hi) - torch.special.log_ndtr(-lo))
    inner = torch.where(lo > 0, right, left)
    # the outer levels take the whole tails: Phi(hi) below, 1 - Phi(lo) = Phi(-lo) above
    return torch.where(k <= 0, torch.special.log_ndtr(hi), torch.where(k >= levels - 1, torch.special.log_ndtr(-lo), inner)).to(dtype)


def gaussian_log_prob(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """``log N(x; mean, e^log_var)`` per element."""
    return -0.5 * (math.log(2 * math.pi) + log_var + (x - mean) ** 2 * torch.exp(-log_var))


def _sum(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1).sum(dim=1)


def prior_term(chain: DiscreteSchedule, x0: Tensor) -> Tensor:
    """``L_T = KL(N(sqrt(abar_T) x0, (1 - abar_T) I) || N(0, I))`` per sample ``(B,)``."""
    mean = chain.alpha_bars[-1].sqrt().to(x0) * x0
    log_var = chain.one_minus_alpha_bars[-1].log().to(x0)
    return _sum(normal_kl(mean, log_var.expand_as(x0), torch.zeros_like(x0), torch.zeros_like(x0)))


def model_prediction(score_fn, sde: SDE, x: Tensor, t: Tensor, variance: str) -> tuple[Tensor, Tensor | None]:
    """``(eps_theta, v)`` of ``score_fn`` at ``(x, t)``: ``eps = -s(t) score``; ``v`` (the learned
    variance interpolation, called as ``score_fn(x, t, variance=True)``) for ``variance="learned"``,
    else None."""
    t = batch_time(t, x)
    if variance == "learned":
        try:
            score, v = score_fn(x, t, variance=True)
        except TypeError:
            raise ValueError(
                "variance='learned' needs a model with learned variances (model=unet_learned_variance or "
                "mlp_learned_variance: LearnedVarianceParameterization); where a variance is chosen (sampler=ddpm, bound=vlb), small and large need none"
            ) from None
    else:
        score, v = score_fn(x, t), None
    return sde.eps_from_score(score, t), v


def step_terms(
    chain: DiscreteSchedule,
    x0: Tensor,
    x_i: Tensor,
    i: Tensor,
    eps: Tensor,
    log_var: Tensor,
    levels: int | None = None,
    interval: tuple[float, float] = (-1.0, 1.0),
) -> Tensor:
    """``L_{i-1}`` per sample ``(B,)``: the KL of step ``i >= 2``, the decoder NLL ``L_0`` at ``i = 1``.

    Args:
        x0, x_i: ``(B, *dims)`` data and its noised version at steps ``i`` ``(B,)`` (int64, ``1..T``).
        eps: ``(B, *dims)`` the model's noise prediction at ``(x_i, i)``.
        log_var: ``log sigma_i^2`` of the model's reverse step, ``(B,)`` or ``(B, *dims)``.
        levels, interval: discrete data (``K`` levels on ``interval``) use the discretized decoder at
            ``i = 1``; None uses the Gaussian density.
    """
    first = expand_like(i == 1, x0)
    i = i.cpu()  # the chain's tables live on the CPU in float64
    a, u = chain.alpha_bars[i].to(x0), chain.one_minus_alpha_bars[i].to(x0)
    x0_hat = (x_i - expand_like(u.sqrt(), x0) * eps) / expand_like(a.sqrt(), x0)
    mean = chain.posterior_mean(x0_hat, x_i, i)
    log_var = expand_like(log_var.to(x0), x0).expand_as(x0)
    true_mean = chain.posterior_mean(x0, x_i, i)
    true_log_var = chain.posterior_variance(i.clamp(min=2)).log().to(x0)  # beta_tilde_1 = 0: step 1 is the decoder's
    kl = normal_kl(true_mean, expand_like(true_log_var, x0), mean, log_var)
    if levels is None:
        decoder = -gaussian_log_prob(x0, mean, log_var)
    else:
        decoder = -discretized_gaussian_log_prob(x0, mean, log_var, levels, interval)
    return _sum(torch.where(first, decoder, kl))
