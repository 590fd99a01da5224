"""Inpainting and SDEdit against exact answers on Gaussian data, whose every conditional is closed form.

Inpainting with the exact score must draw the unknown coordinates from the exact conditional Gaussian
given the known ones; SDEdit with a stochastic sampler must draw from the exact posterior given the
noised input, which interpolates between the input (t0 -> 0) and the data law (t0 = T).
"""

from __future__ import annotations

import functools

import pytest
import torch

import sde_diffusion as sd
from analytic import KernelFreeVP, gaussian
from sde_diffusion import samplers as S
from test_samplers_sde import assert_gaussian

F64 = torch.float64
SHAPES = {"points": None, "images": (1, 8, 8)}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _data(kind: str) -> tuple[sd.GaussianMixture, tuple[int, ...]]:
    """A 2-D Gaussian for points (correlation 0.59, so conditioning matters), a 64-D one shaped
    (1, 8, 8) for images."""
    event_shape = SHAPES[kind]
    dist = gaussian(2, seed=4) if event_shape is None else gaussian(64, seed=1, event_shape=event_shape)
    return dist, dist.event_shape


def conditional_law(dist: sd.GaussianMixture, x0: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of the unknown coordinates of ``N(mu, Sigma)`` given the known ones
    (``known``: flat boolean mask): ``mu_u + S_uk S_kk^-1 (x_k - mu_k)``, ``S_uu - S_uk S_kk^-1 S_ku``."""
    mu, cov, x0 = dist.means[0], dist.covs[0], x0.reshape(-1)
    u, k = ~known, known
    gain = torch.linalg.solve(cov[k][:, k], cov[k][:, u]).T
    return mu[u] + gain @ (x0[k] - mu[k]), cov[u][:, u] - gain @ cov[k][:, u]


# ------------------------------------------------------------------------------------ inpainting
@pytest.mark.parametrize("kind, region, n", [("points", "left", 4000), pytest.param("images", "center", 1000, marks=pytest.mark.slow)])
def test_inpainting_draws_the_exact_conditional_and_keeps_the_known_pixels(kind, region, n):
    """The unknown coordinates against the exact conditional law (chi-square on the whitened mean
    and covariance at p = 1e-6: at n = 4000 that resolves ~0.08 standard deviations in a mean and
    ~11 % in a variance). Replacement alone is biased: the predictor chain follows
    ``p_t(x_u | x_k(t))``, which is not the conditional at intermediate t. Measured on these data with
    this grid: without a corrector the mean test gives p = 1e-122 (points) and 1e-269 (images), with
    two Langevin steps per time still 1e-29 (images), so this test catches the bias. Ten Langevin
    steps per time on a grid uniform in log-SNR (dense at small t, where ``p_t(x_u | x_k(t))`` is the
    conditional) remove it; what remains is the Langevin step's own O(snr^2) variance inflation,
    ~1 % at snr = 0.1 (measured 0.8 % at n = 20,000), far inside the tolerance. Batch-mean norms:
    per-sample ones are biased in low dimension (see LangevinCorrector)."""
    dist, shape = _data(kind)
    sde = sd.VPSDE()
    mask = S.inpainting_mask(region, shape)
    x0 = dist.sample(1, generator=gen(5), dtype=F64)
    x_known = x0.expand(n, *shape).clone()
    ts = sd.log_snr_time_grid(sde, 100, 1e-3, dtype=F64)
    corrector = S.LangevinCorrector(snr=0.1, n_steps=10, norm="batch")
    sampler = functools.partial(S.predictor_corrector, predictor=S.ReverseDiffusionPredictor(), corrector=corrector)
    out = S.inpaint(sde, dist.score_fn(sde), x_known, mask, ts, sampler=sampler, generator=gen(0))
    assert out.samples.shape == (n, *shape) and out.nfe == 100 * 11 + 1
    assert torch.equal(out.samples[:, mask], x_known[:, mask])  # exactly, not approximately
    flat = mask.reshape(-1)
    assert_gaussian(out.samples.reshape(n, -1)[:, ~flat], *conditional_law(dist, x0, flat))


def test_inpainting_accepts_masks_per_sample_and_as_numbers():
    dist, shape = _data("images")
    sde, n = sd.VESDE(), 6
    x_known = dist.sample(n, generator=gen(0), dtype=F64)
    per_sample = torch.stack([S.inpainting_mask("random", shape, generator=gen(i)) for i in range(n)])
    ts = sd.uniform_time_grid(sde, 5, 1e-3, dtype=F64)
    for mask in (per_sample, per_sample.double()):
        sampler = functools.partial(S.predictor_corrector, predictor=S.AncestralPredictor(), corrector=S.NoCorrector())
        out = S.inpaint(sde, dist.score_fn(sde), x_known, mask, ts, sampler=sampler, generator=gen(1))
        assert torch.equal(out.samples[per_sample], x_known[per_sample]) and out.nfe == 6
        assert not torch.isclose(out.samples[~per_sample], x_known[~per_sample]).any()


def test_inpainting_works_for_an_sde_without_a_kernel():
    """The noised known values are then simulated (sample_marginal); predictors that need no kernel run."""
    dist, shape = _data("points")
    sde = KernelFreeVP()
    x_known = dist.sample(8, generator=gen(0), dtype=F64)
    mask = S.inpainting_mask("right", shape)
    out = S.inpaint(sde, dist.score_fn(sd.VPSDE()), x_known, mask, sd.uniform_time_grid(sde, 4, dtype=F64),
                    sampler=S.euler_maruyama, generator=gen(1))  # fmt: skip
    assert torch.equal(out.samples[:, 0], x_known[:, 0]) and torch.isfinite(out.samples).all() and out.nfe == 4
    with pytest.raises(ValueError, match="needs the perturbation kernel"):
        S.inpaint(sde, dist.score_fn(sd.VPSDE()), x_known, mask, sd.uniform_time_grid(sde, 4, dtype=F64),
                  sampler=functools.partial(S.euler_maruyama, denoise_to_zero=True))  # fmt: skip


@pytest.mark.parametrize(
    "mask, kwargs, message",
    [
        (torch.ones(3, 8, 8, dtype=torch.bool), {}, r"does not broadcast to x_known's shape \(4, 1, 8, 8\)"),
        (torch.full((1, 8, 8), 0.5), {}, "only 0 and 1"),
        ([1, 0], {}, "mask must be a tensor"),
        (torch.ones(1, 8, 8), {"predictor": S.NoPredictor()}, "does nothing"),
        (torch.ones(1, 8, 8), {"corrector": S.LangevinCorrector}, "pass an instance"),
    ],
)
def test_inpainting_rejects_bad_arguments(mask, kwargs, message):
    sde = sd.VPSDE()
    sampler = functools.partial(S.predictor_corrector, **{"predictor": S.ReverseDiffusionPredictor(), "corrector": S.NoCorrector(), **kwargs})
    with pytest.raises((ValueError, TypeError), match=message):
        S.inpaint(sde, lambda x, t: -x, torch.zeros(4, 1, 8, 8), mask, sd.uniform_time_grid(sde, 3), sampler=sampler)


def test_inpainting_masks_mark_the_known_pixels():
    expected_unknown = {
        "left": [[1, 1, 0, 0]] * 4,
        "right": [[0, 0, 1, 1]] * 4,
        "top": [[1] * 4, [1] * 4, [0] * 4, [0] * 4],
        "bottom": [[0] * 4, [0] * 4, [1] * 4, [1] * 4],
        "center": [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]],
    }
    for region, unknown in expected_unknown.items():
        mask = S.inpainting_mask(region, (3, 4, 4))
        assert mask.dtype == torch.bool and mask.shape == (3, 4, 4)
        assert torch.equal(~mask, torch.tensor(unknown, dtype=torch.bool).expand(3, 4, 4)), region
    assert S.inpainting_mask("left", (5,)).tolist() == [False, False, False, True, True]
    assert S.inpainting_mask("right", (2,)).tolist() == [True, False]
    # random: each pixel unknown with probability 1/2, shared by the channels; 4096 pixels, 5 standard errors
    random = S.inpainting_mask("random", (2, 64, 64), generator=gen(0))
    assert torch.equal(random[0], random[1]) and abs((~random[0]).double().mean() - 0.5) < 5 * 0.5 / 64
    assert torch.equal(random, S.inpainting_mask("random", (2, 64, 64), generator=gen(0)))
    with pytest.raises(ValueError, match="needs images"):
        S.inpainting_mask("top", (2,))
    with pytest.raises(ValueError, match="one of left, right, top, bottom, center, random"):
        S.inpainting_mask("diagonal", (1, 8, 8))


# ---------------------------------------------------------------------------------------- SDEdit
def sdedit_law(dist: sd.GaussianMixture, sde: sd.SDE, x_input: torch.Tensor, t0: float):
    """Exact law of SDEdit's output for Gaussian data ``N(mu, Sigma)`` and the exact reverse SDE: with
    ``x(t0) = m x_in + s z`` and ``C = m^2 Sigma + s^2 I`` the output is a posterior sample given
    ``x(t0)``, so it is Gaussian with mean ``mu + m^2 Sigma C^-1 (x_in - mu)`` and covariance
    ``Sigma - m^2 Sigma C^-1 Sigma + m^2 s^2 Sigma C^-2 Sigma`` (posterior covariance plus the spread
    of the posterior mean over ``z``)."""
    mu, cov = dist.means[0], dist.covs[0]
    m, s = sde.kernel(torch.tensor(t0, dtype=F64))
    gain = m**2 * torch.linalg.solve(m**2 * cov + s**2 * torch.eye(dist.dim, dtype=F64), cov).T  # m^2 Sigma C^-1
    return mu + gain @ (x_input.reshape(-1) - mu), cov - gain @ cov + (s**2 / m**2) * gain @ gain.T


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("kind, n", [("points", 4000), ("images", 1000)])
@pytest.mark.parametrize("t0", [0.2, 1.0])
def test_sdedit_draws_the_exact_posterior_given_the_noised_input(sde_name, kind, n, t0):
    """Chi-square at p = 1e-6 against :func:`sdedit_law` (resolution as in the inpainting test). The
    reverse-diffusion chain is the exact posterior sampler up to its O(dt) weak error, which at 500
    steps is well below the ~0.08 standard deviations the test resolves; Tweedie's final step removes
    the noise of ``s(eps)`` (VP: variance 1e-4 of eigenvalues >= 0.1). At ``t0 = T`` the input is
    ignored: the law's mean moves by ``m(T)^2 (x_in - mu)`` (VP: 4e-5 of the input's offset; VE:
    ``(sigma_min / sigma_max)^2``-small), so the output is the model's own data law."""
    sde = {"vp": sd.VPSDE(), "ve": sd.VESDE()}[sde_name]
    dist, shape = _data(kind)
    x_input = (dist.means[0] + 2.0).reshape(1, *shape).expand(n, *shape)  # a point off the data
    ts = sd.uniform_time_grid(sde, 500, 1e-3, dtype=F64)
    sampler = functools.partial(S.predictor_corrector, predictor=S.ReverseDiffusionPredictor(), corrector=S.NoCorrector())
    out = S.sdedit(sde, dist.score_fn(sde), x_input, t0, ts, sampler=sampler, generator=gen(0))
    assert out.samples.shape == (n, *shape) and out.nfe == int((ts < t0).sum()) + 1  # steps + denoising
    mean, cov = sdedit_law(dist, sde, x_input[0], t0)
    assert_gaussian(out.samples, mean, cov)
    if t0 == sde.T:
        assert (mean - dist.means[0]).abs().max() < 1e-3


@pytest.mark.parametrize("kind", list(SHAPES))
def test_sdedit_returns_the_input_as_t0_goes_to_zero(kind):
    """At t0 = 0 (or below the grid's end) nothing is sampled and the input comes back exactly; for
    small t0 the output stays within a few s(t0) of it (posterior shrinkage towards the data mean is
    O(s^2), the noise O(s)), so the distance shrinks like sqrt(t0) for the VP SDE near 0."""
    dist, shape = _data(kind)
    sde, n = sd.VPSDE(), 200
    x_input = dist.sample(n, generator=gen(0), dtype=F64)
    ts = sd.uniform_time_grid(sde, 1000, 1e-3, dtype=F64)
    sampler = functools.partial(S.predictor_corrector, predictor=S.ReverseDiffusionPredictor(), corrector=S.NoCorrector())
    for t0 in (0.0, 1e-3):
        out = S.sdedit(sde, dist.score_fn(sde), x_input, t0, ts, sampler=sampler, generator=gen(1))
        assert torch.equal(out.samples, x_input) and out.nfe == 0
    rms = []
    for t0 in (0.004, 0.016):
        out = S.sdedit(sde, dist.score_fn(sde), x_input, t0, ts, sampler=sampler, generator=gen(1))
        s = float(sde.kernel(torch.tensor(t0, dtype=F64))[1])
        rms.append((out.samples - x_input).pow(2).mean().sqrt().item())
        assert rms[-1] < 2 * s
    assert rms[0] < 0.7 * rms[1]  # 4x the time, ~2x the distance


def test_sdedit_keeps_the_grids_spacing_below_t0():
    sde = sd.VPSDE()
    seen = []

    def sampler(sde, score_fn, x, ts, *, generator=None, progress=False):
        seen.append(ts)
        return S.SamplerOutput(x, len(ts) - 1)

    ts = sd.uniform_time_grid(sde, 10, 1e-3, dtype=F64)
    S.sdedit(sde, lambda x, t: -x, torch.zeros(3, 2), 0.55, ts, sampler=sampler)
    assert torch.equal(seen[0], torch.cat([torch.tensor([0.55], dtype=F64), ts[ts < 0.55]]))
    S.sdedit(sde, lambda x, t: -x, torch.zeros(3, 2), ts[4].item(), ts, sampler=sampler)
    assert torch.equal(seen[1], ts[4:])
    for t0 in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"t0 must lie in \[0, 1\], got .* \(from t = 0 up to the grid's start ts\[0\]"):
            S.sdedit(sde, lambda x, t: -x, torch.zeros(3, 2), t0, ts, sampler=sampler)
