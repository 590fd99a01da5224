"""One shape rule: every public SDE-level function takes (B, 2) points and (B, 1, 8, 8) images alike,
and the image result equals the flattened point-cloud result (nothing depends on the layout)."""

from __future__ import annotations

import pytest
import torch

import sde_diffusion as sd
from analytic import all_sdes

SHAPES = [(6, 2), (6, 1, 8, 8)]


def _score(x, t):
    return -x / (1.0 + t.reshape(-1, *[1] * (x.dim() - 1)))


@pytest.mark.parametrize("name", list(all_sdes()))
@pytest.mark.parametrize("shape", SHAPES)
def test_sde_methods_keep_shapes(name, shape):
    sde = all_sdes()[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.rand(shape[0], generator=g, dtype=torch.float64) * 0.9 + 0.05
    b = shape[0]
    assert sde.drift(x, t).shape == shape
    assert sde.diffusion(t).shape == (b,)
    mean, std = sde.marginal(x, t)
    assert mean.shape == shape and std.shape == (b,)
    xt, z, s = sde.perturb(x, t, generator=g)
    assert xt.shape == z.shape == shape and s.shape == (b,)
    assert sde.log_snr(t).shape == (b,)
    assert sde.prior_sample(shape, generator=g).shape == shape
    assert sde.prior_logp(x).shape == (b,)
    f, gg = sde.discretize(x, t, 0.01)
    assert f.shape == shape and gg.shape == (b,)
    rev = sde.reverse(_score)
    assert rev.drift(x, t).shape == shape and rev.discretize(x, t, 0.01)[0].shape == shape
    assert sde.probability_flow(_score)(t[0], x).shape == shape
    assert sd.simulate_forward(sde, x, t, 3, generator=g).shape == shape
    assert sd.sample_marginal(sde, x, t, generator=g).shape == shape


@pytest.mark.parametrize("name", list(all_sdes()))
def test_images_and_flattened_points_give_the_same_numbers(name):
    sde = all_sdes()[name]
    img = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    flat = img.reshape(4, 64)
    t = torch.tensor([0.1, 0.3, 0.6, 0.9], dtype=torch.float64)
    torch.testing.assert_close(sde.drift(img, t).reshape(4, 64), sde.drift(flat, t))
    torch.testing.assert_close(sde.marginal(img, t)[0].reshape(4, 64), sde.marginal(flat, t)[0])
    torch.testing.assert_close(sde.prior_logp(img), sde.prior_logp(flat))
    torch.testing.assert_close(sde.probability_flow(_score).drift(img, t).reshape(4, 64), sde.probability_flow(_score).drift(flat, t))


@pytest.mark.parametrize("shape", SHAPES)
def test_gaussian_mixture_oracle_keeps_shapes(shape):
    d = int(torch.tensor(shape[1:]).prod())
    mix = sd.GaussianMixture([0.5, 0.5], torch.randn(2, d, dtype=torch.float64), torch.tensor([0.5, 1.0]), event_shape=shape[1:])
    x = mix.sample(shape[0], dtype=torch.float64)
    t = torch.rand(shape[0], dtype=torch.float64)
    assert x.shape == shape
    assert mix.log_prob(x).shape == (shape[0],) and mix.log_prob(x, t, sd.VPSDE()).shape == (shape[0],)
    assert mix.score(x, t, sd.VESDE()).shape == shape


@pytest.mark.parametrize("shape", SHAPES)
def test_time_scalar_and_batch_agree(shape):
    sde = sd.VPSDE()
    x = torch.randn(shape)
    torch.testing.assert_close(sde.drift(x, 0.3), sde.drift(x, torch.full((shape[0],), 0.3)))
    with pytest.raises(ValueError, match=r"time must be a scalar or have shape \(B,\)"):
        sde.drift(x, torch.rand(shape[0] + 1))
