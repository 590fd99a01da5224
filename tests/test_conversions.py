"""The conversions on the Gaussian path (score, eps, x0, v, velocity and Tweedie's denoiser), methods
of every SDE: round trips to round-off, Tweedie's x0 against the closed-form posterior mean of
Gaussian data, the velocity against the probability-flow ODE's drift, and the import order that lets
``sdes`` name ``ScoreFn`` without importing the score wrappers."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from analytic import KernelFreeVP, gaussian, mixture

import sde_diffusion as sd
from sde_diffusion.examples.quadratic_vp import QuadraticVPSDE


class TrigPath(sd.GaussianPathSDE):
    """A user's path given by ``m`` and ``s`` alone (rates by autograd): ``m = cos(pi t / 2)``,
    ``s = sin(pi t / 2)``, ending before ``m = 0``."""

    T = 0.95
    prior_std = 1.0

    def mean_coeff(self, t):
        return torch.cos(0.5 * math.pi * t)

    def std(self, t):
        return torch.sin(0.5 * math.pi * t)


SDES = {
    "vp": sd.VPSDE(),
    "ve": sd.VESDE(),
    "edm": sd.EDMSDE(),
    "rectified_flow": sd.RectifiedFlow(),
    "ddpm": sd.DDPMSDE("linear", T=100),
    "user_quadratic_vp": QuadraticVPSDE(),
    "user_trig": TrigPath(),
}
SHAPES = {"points": (5, 2), "images": (3, 2, 4, 4)}


def _times(sde: sd.SDE, batch: int, seed: int = 0) -> torch.Tensor:
    """``(B,)`` float64 times spread over ``[0.05 T, 0.95 T]``."""
    u = torch.rand(batch, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return sde.T * (0.05 + 0.9 * u)


def _draws(shape, seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(2))


def _close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("name", SDES)
def test_conversions_round_trip(name, shape):
    """score -> eps -> score, score -> x0 -> score, eps -> x0 -> eps, (eps, x0) -> v -> score and
    score -> velocity -> score are identities to round-off, with (B,) times and a scalar time."""
    sde = SDES[name]
    x, score = _draws(shape, seed=1)
    for t in (_times(sde, shape[0]), 0.3 * sde.T):
        eps = sde.eps_from_score(score, t)
        _close(sde.score_from_eps(eps, t), score)
        x0 = sde.x0_from_score(x, score, t)
        _close(sde.score_from_x0(x, x0, t), score)
        _close(sde.x0_from_eps(x, eps, t), x0)
        _close(sde.eps_from_x0(x, x0, t), eps)
        _close(sde.score_from_v(x, sde.v_from_eps_x0(eps, x0, t), t), score)
        _close(sde.score_from_velocity(x, sde.velocity_from_score(x, score, t), t), score)


@pytest.mark.parametrize("name", SDES)
def test_eps_and_x0_are_the_kernel_decomposition(name):
    """For ``x = m x0 + s eps`` the score ``-eps / s`` maps to exactly that ``eps`` and ``x0``, and ``v``
    is ``m eps - s x0``."""
    sde = SDES[name]
    x0, eps = _draws((4, 3), seed=2)
    t = _times(sde, 4, seed=3)
    m, s = (c[:, None] for c in sde.kernel(t))
    x = m * x0 + s * eps
    score = -eps / s
    _close(sde.eps_from_score(score, t), eps)
    _close(sde.x0_from_eps(x, eps, t), x0)
    _close(sde.score_from_x0(x, x0, t), score)
    _close(sde.v_from_eps_x0(eps, x0, t), m * eps - s * x0)


@pytest.mark.parametrize("name", SDES)
def test_tweedie_x0_is_the_gaussian_posterior_mean(name):
    """Tweedie's ``x0_from_score`` of the exact score of ``N(mu, Sigma)`` data is the posterior mean
    ``E[x0 | x_t] = mu + Sigma m (m^2 Sigma + s^2 I)^-1 (x_t - m mu)`` in closed form."""
    sde = SDES[name]
    dist = gaussian(dim=3, seed=4)
    mu, cov = dist.means[0], dist.covs[0]
    x = dist.sample(6, generator=torch.Generator().manual_seed(5)).to(torch.float64)
    t = _times(sde, 6, seed=6)
    m, s = sde.kernel(t)
    x_t = m[:, None] * x + s[:, None] * torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    expected = torch.stack(
        [
            mu + cov @ (m[b] * torch.linalg.solve(m[b] ** 2 * cov + s[b] ** 2 * torch.eye(3, dtype=torch.float64), x_t[b] - m[b] * mu))
            for b in range(6)
        ]
    )
    torch.testing.assert_close(sde.x0_from_score(x_t, dist.score(x_t, t, sde), t), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("name", [*SDES, "kernel_free_vp"])
def test_velocity_is_the_probability_flow_drift(name, shape):
    """``velocity_from_score(x, score(x, t), t)`` is the probability-flow ODE's drift
    ``f - g^2 score / 2`` (Song et al. 2021, Eq. 13), with or without a kernel."""
    sde = KernelFreeVP() if name == "kernel_free_vp" else SDES[name]
    dist = mixture(dim=math.prod(shape[1:]), n_components=3, seed=8, event_shape=shape[1:])
    x, _ = _draws(shape, seed=9)
    t = _times(sde, shape[0], seed=10)
    score_fn = dist.score_fn(sd.VPSDE() if name == "kernel_free_vp" else sde)
    velocity = sde.velocity_from_score(x, score_fn(x, t), t)
    torch.testing.assert_close(velocity, sde.probability_flow(score_fn).drift(x, t), rtol=1e-9, atol=1e-9)


def test_a_given_kernel_is_used_as_given():
    """``kernel=(m, s)`` (a sampler's table) replaces the kernel at ``t``: 0-d or ``(B,)`` coefficients."""
    sde = sd.VPSDE()
    x, score = _draws((4, 2), seed=11)
    t = _times(sde, 4, seed=12)
    m, s = sde.kernel(t)
    _close(sde.x0_from_score(x, score, t, kernel=(m, s)), sde.x0_from_score(x, score, t))
    m0, s0 = sde.kernel(t[0])
    _close(sde.eps_from_score(score, 0.0, kernel=(m0, s0)), sde.eps_from_score(score, t[0]))
    _close(sde.score_from_x0(x, x, t, kernel=(2.0, 0.5)), (2.0 * x - x) / 0.25)


def test_half_precision_predictions_keep_the_kernel_in_the_times_precision():
    """A bfloat16 network output with float32 times: the kernel is evaluated in float32 (bfloat16
    would round ``t = 1e-3`` and ``s(t)`` to three digits), and the score comes out in float32."""
    sde = sd.VPSDE()
    t = torch.full((3,), 1e-3)
    eps = torch.ones(3, 2, dtype=torch.bfloat16)
    score = sde.score_from_eps(eps, t)
    assert score.dtype == torch.float32
    torch.testing.assert_close(score, -1.0 / sde.kernel(t)[1][:, None].expand(3, 2), rtol=1e-6, atol=0)


def test_kernel_conversions_need_the_kernel():
    """An SDE without a kernel has the velocity conversions but not the kernel ones, whose error names the fix."""
    sde = KernelFreeVP()
    x, score = _draws((2, 2), seed=13)
    _close(sde.score_from_velocity(x, sde.velocity_from_score(x, score, 0.5), 0.5), score)
    with pytest.raises(NotImplementedError, match="implement kernel"):
        sde.x0_from_score(x, score, 0.5)


def _modules_imported_by(module: str) -> set[str]:
    """The ``sde_diffusion`` modules that importing ``module`` loads, in a fresh interpreter whose
    ``sde_diffusion`` package is an empty stand-in (the real ``__init__`` imports everything)."""
    code = (
        "import importlib.util, sys, types\n"
        "spec = importlib.util.find_spec('sde_diffusion')\n"
        "pkg = types.ModuleType('sde_diffusion'); pkg.__path__ = list(spec.submodule_search_locations)\n"
        "sys.modules['sde_diffusion'] = pkg\n"
        f"import {module}\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('sde_diffusion'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_sdes_import_no_score_wrappers():
    """``sde_diffusion.sdes.base`` (and the whole ``sdes`` package it loads) imports neither the score
    wrappers nor any layer above ``sdes``: ``ScoreFn`` comes from the dependency-free ``types``."""
    loaded = _modules_imported_by("sde_diffusion.sdes.base")
    assert "sde_diffusion.sdes.base" in loaded and "sde_diffusion.types" in loaded
    above = ("scores", "models", "losses", "samplers", "likelihood", "training", "config", "cli")
    assert not {m for m in loaded if m.split(".")[1:2] and m.split(".")[1] in above}, sorted(loaded)


def test_types_module_is_dependency_free():
    """``sde_diffusion.types`` loads no other module of the package."""
    assert _modules_imported_by("sde_diffusion.types") == {"sde_diffusion", "sde_diffusion.types"}
