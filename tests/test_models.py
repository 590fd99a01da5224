"""Networks and parameterization wrappers."""

from __future__ import annotations

import pytest
import torch

import sde_diffusion as sd
from analytic import KernelFreeVP, all_sdes, mixture

SDES = all_sdes()


class _Oracle(torch.nn.Module):
    """A 'network' that outputs exactly what a parameterization asks of it, from the true score."""

    def __init__(self, dist, sde, target):
        super().__init__()
        self.dist, self.sde, self.target = dist, sde, target

    def forward(self, x, t):
        score = self.dist.score(x, t, self.sde)
        m, s = self.sde.kernel(t)
        m, s = m.reshape(-1, *[1] * (x.dim() - 1)), s.reshape(-1, *[1] * (x.dim() - 1))
        return {"score": score, "eps": -s * score, "x0": (x + s**2 * score) / m}[self.target]


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize(
    "wrapper, target",
    [(sd.ScoreParameterization, "score"), (sd.EpsilonParameterization, "eps"), (sd.DataParameterization, "x0")],
)
@pytest.mark.parametrize("event_shape", [(2,), (1, 2, 2)])
def test_parameterizations_recover_the_score(name, wrapper, target, event_shape):
    """score -> eps = -s score -> score and x0_hat = (x + s^2 score)/m -> score are inverse maps."""
    sde = SDES[name]
    d = 2 if event_shape == (2,) else 4
    dist = mixture(dim=d, n_components=3, seed=0, event_shape=event_shape)
    x = dist.sample(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.rand(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.98 + 0.01
    model = wrapper(_Oracle(dist, sde, target), sde)
    torch.testing.assert_close(model(x, t), dist.score(x, t, sde), rtol=1e-8, atol=1e-8)


def test_tweedie_x0_of_a_point_mass_is_the_point():
    """For data concentrated at mu the posterior mean E[x0 | x_t] is mu at every t (x0-prediction)."""
    sde = sd.VPSDE()
    mu = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    point = sd.GaussianMixture([1.0], mu, torch.tensor([1e-6], dtype=torch.float64))
    x = torch.randn(10, 2, dtype=torch.float64)
    t = torch.linspace(0.1, 0.9, 10, dtype=torch.float64)
    m, s = sde.kernel(t)
    x0_hat = (x + s[:, None] ** 2 * point.score(x, t, sde)) / m[:, None]
    torch.testing.assert_close(x0_hat, mu.expand(10, 2), rtol=1e-4, atol=1e-4)


def test_kernel_wrappers_refuse_an_sde_without_kernel():
    net = sd.TimeMLP((2,), hidden_dim=8, n_layers=1)
    with pytest.raises(ValueError, match="ScoreParameterization"):
        sd.EpsilonParameterization(net, KernelFreeVP())
    sd.ScoreParameterization(net, KernelFreeVP())  # needs no kernel


@pytest.mark.parametrize("shape", [(5, 2), (5, 1, 8, 8), (5, 3, 4)])
@pytest.mark.parametrize("embedding", [sd.GaussianFourierEmbedding(32), sd.SinusoidalEmbedding(32)], ids=["fourier", "sinusoidal"])
def test_time_mlp_keeps_the_shape_and_starts_at_zero(shape, embedding):
    net = sd.TimeMLP(shape[1:], hidden_dim=32, n_layers=3, time_embedding=embedding)
    x, t = torch.randn(shape), torch.rand(shape[0])
    out = net(x, t)
    assert out.shape == shape and torch.equal(out, torch.zeros(shape))
    torch.nn.init.normal_(net.out.weight)
    out_a, out_b = net(x, t), net(x, t + 0.3)
    assert not torch.allclose(out_a, out_b)  # time conditions the output
    with pytest.raises(ValueError, match="built for samples of shape"):
        net(torch.randn(5, 7), t)


def test_time_mlp_runs_in_float64():
    net = sd.TimeMLP((2,), hidden_dim=8, n_layers=2).double()
    assert net(torch.randn(3, 2, dtype=torch.float64), torch.rand(3, dtype=torch.float64)).dtype == torch.float64


def test_time_mlp_refuses_an_int_shape_naming_the_tuple():
    # TimeMLP(2) is a natural first try for 2-D points; the shape of one sample is a tuple
    with pytest.raises(ValueError, match=r"data_shape must be a tuple such as \(2,\) .* got 2; write TimeMLP\(\(2,\), \.\.\.\)") as err:
        sd.TimeMLP(2, hidden_dim=8)
    assert "\n" not in str(err.value)
    assert sd.TimeMLP([2], hidden_dim=8).data_shape == (2,)  # any sequence of sizes is a shape


@pytest.mark.parametrize("make", [lambda: sd.GaussianFourierEmbedding(7), lambda: sd.SinusoidalEmbedding(0), lambda: sd.TimeMLP((0,))])
def test_bad_model_sizes_are_rejected(make):
    with pytest.raises(ValueError):
        make()
