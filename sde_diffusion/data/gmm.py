"""Gaussian mixtures with exact scores and log-densities of every marginal: the analytic oracle.

Under a Gaussian perturbation kernel ``N(m(t) x_0, s(t)^2 I)`` the marginal of the mixture
``sum_k w_k N(mu_k, Sigma_k)`` is ``sum_k w_k N(m mu_k, m^2 Sigma_k + s^2 I)`` (docs/references.md, exact
test oracles). Each ``Sigma_k = U_k diag(lam_k) U_k^T`` is diagonalised once, so the marginal's
covariances ``U_k diag(m^2 lam_k + s^2) U_k^T`` cost one projection per component at any ``t``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._shapes import batch_time
from ..sdes.base import SDE


class GaussianMixture:
    """A mixture of ``K`` Gaussians over samples of shape ``event_shape`` (flattened to ``D``).

    Args:
        weights: ``(K,)`` non-negative, normalised here.
        means: ``(K, D)``.
        covs: the components' covariances ``(K, D, D)``, symmetric positive definite; or, for
            isotropic components, a scalar (shared by all ``K``) or ``(K,)`` positive numbers that
            are STANDARD DEVIATIONS, not variances, despite the name: ``covs=0.3`` gives each
            component the covariance ``0.09 I`` (samples spread 0.3 per coordinate); or None for
            unit covariances ``I``.
        event_shape: shape of one sample (default ``(D,)``); e.g. ``(1, 8, 8)`` for tiny images.
    """

    def __init__(self, weights, means, covs=None, event_shape: tuple[int, ...] | None = None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.dim() != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}")
        k, d = means.shape
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"weights must be {k} non-negative numbers with a positive sum, got {weights}")
        if covs is None:
            covs = torch.eye(d, dtype=torch.float64).expand(k, d, d)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.dim() <= 1:  # isotropic standard deviations
            if covs.shape not in ((), (1,), (k,)) or not (covs > 0).all():
                raise ValueError(
                    f"covs as a scalar or (K,) = ({k},) holds positive standard deviations of isotropic components, got {covs.tolist()}"
                )
            covs = (covs.expand(k) ** 2)[:, None, None] * torch.eye(d, dtype=torch.float64)
        if covs.shape != (k, d, d):
            raise ValueError(
                f"covs must have shape (K, D, D) = ({k}, {d}, {d}), or be a scalar or ({k},) standard deviations "
                f"of isotropic components, got {tuple(covs.shape)}"
            )
        if not torch.allclose(covs, covs.transpose(1, 2)):
            raise ValueError("covariances must be symmetric")
        lam, vecs = torch.linalg.eigh(covs)
        if (lam <= 0).any():
            raise ValueError("covariances must be positive definite")
        event_shape = (d,) if event_shape is None else tuple(event_shape)
        if math.prod(event_shape) != d:
            raise ValueError(f"event_shape {event_shape} does not hold D = {d} values")
        self.event_shape = event_shape
        self.weights = weights / weights.sum()
        self.means = means
        self.covs = covs
        self._eigval = lam  # (K, D)
        self._eigvec = vecs  # (K, D, D), columns are eigenvectors
        self._chol = torch.linalg.cholesky(covs)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    # ------------------------------------------------------------------------------ sampling
    def sample(self, n: int, *, generator: torch.Generator | None = None, dtype=torch.float32) -> Tensor:
        """``n`` samples of shape ``(n, *event_shape)`` (drawn in float64 on the CPU, then cast)."""
        return self.sample_with_components(n, generator=generator, dtype=dtype)[0]

    def sample_with_components(self, n: int, *, generator=None, dtype=torch.float32) -> tuple[Tensor, Tensor]:
        """Like :meth:`sample`, also returning the ``(n,)`` component index of each sample."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[comp] + torch.einsum("nij,nj->ni", self._chol[comp], z)
        return x.to(dtype).reshape(n, *self.event_shape), comp

    # -------------------------------------------------------------------------- exact densities
    def _component_terms(self, x: Tensor, t, sde: SDE | None):
        """Per-component ``log w_k + log N_k`` ``(B, K)`` and ``U_k^T (x - m mu_k) / var`` ``(B, K, D)``."""
        b = x.shape[0]
        xf = x.reshape(b, -1)
        if xf.shape[1] != self.dim:
            raise ValueError(f"expected samples with {self.dim} values (event shape {self.event_shape}), got {tuple(x.shape)}")
        dt = x.dtype
        mu, lam, vec = self.means.to(x.device, dt), self._eigval.to(x.device, dt), self._eigvec.to(x.device, dt)
        if sde is None:
            m = torch.ones(b, device=x.device, dtype=dt)
            s = torch.zeros(b, device=x.device, dtype=dt)
        else:
            m, s = sde.kernel(batch_time(t, x))
        y = xf[:, None, :] - m[:, None, None] * mu[None]  # (B, K, D)
        proj = torch.einsum("bkd,kde->bke", y, vec)  # coordinates in each eigenbasis
        var = m[:, None, None] ** 2 * lam[None] + s[:, None, None] ** 2
        log_norm = -0.5 * ((proj**2 / var).sum(-1) + var.log().sum(-1) + self.dim * math.log(2 * math.pi))
        log_joint = self.weights.to(x.device, dt).log()[None] + log_norm
        return log_joint, proj / var, vec

    def log_prob(self, x: Tensor, t: float | Tensor | None = None, sde: SDE | None = None) -> Tensor:
        """Exact ``log p_t(x)`` in nats, shape ``(B,)``; without ``sde`` the data density ``p_0``."""
        log_joint, _, _ = self._component_terms(x, t, sde)
        return torch.logsumexp(log_joint, dim=1)

    def score(self, x: Tensor, t: float | Tensor | None = None, sde: SDE | None = None) -> Tensor:
        """Exact ``grad_x log p_t(x)``, shape of ``x``: responsibilities times component scores."""
        log_joint, scaled, vec = self._component_terms(x, t, sde)
        resp = torch.softmax(log_joint, dim=1)  # (B, K)
        comp_scores = -torch.einsum("bke,kde->bkd", scaled, vec)
        return (resp[..., None] * comp_scores).sum(1).reshape(x.shape)

    def class_log_prob(self, x: Tensor, y: Tensor, t: float | Tensor | None = None, sde: SDE | None = None) -> Tensor:
        """Exact ``log p_t(y | x)`` ``(B,)`` with the components as classes: the log responsibility of
        component ``y`` ``(B,)`` (int64) under the noised marginal ``p_t`` (the data's without ``sde``)."""
        log_joint, _, _ = self._component_terms(x, t, sde)
        return torch.log_softmax(log_joint, dim=1).gather(1, y.to(x.device)[:, None])[:, 0]

    def classifier(self, sde: SDE):
        """The exact noisy-data classifier as ``log_prob(x, t, y) -> (B,)``, the form classifier
        guidance takes (:class:`~sde_diffusion.samplers.ClassifierGuidedScore`)."""

        def log_prob(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
            return self.class_log_prob(x, y, t, sde)

        return log_prob

    def responsibilities(self, x: Tensor) -> Tensor:
        """Posterior component probabilities under ``p_0``, shape ``(B, K)``."""
        log_joint, _, _ = self._component_terms(x, None, None)
        return torch.softmax(log_joint, dim=1)

    def score_fn(self, sde: SDE):
        """The exact score of the marginals under ``sde`` as a ``score(x, t)`` callable."""

        def score(x: Tensor, t: Tensor) -> Tensor:
            return self.score(x, t, sde)

        return score

    def mean(self) -> Tensor:
        """Mean of ``p_0``, shape ``(D,)`` (float64)."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Covariance of ``p_0``, shape ``(D, D)`` (float64)."""
        mu = self.mean()
        centred = self.means - mu
        within = torch.einsum("k,kij->ij", self.weights, self.covs)
        between = torch.einsum("k,ki,kj->ij", self.weights, centred, centred)
        return within + between

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, D={self.dim}, event_shape={self.event_shape})"
