"""``sd.sliced_wasserstein`` against closed forms: a translation, identical sets, and its refusals."""

from __future__ import annotations

import math

import pytest
import torch

import sde_diffusion as sd


def test_a_translation_by_m_is_norm_m_over_sqrt_d_in_data_units():
    # SW2^2 = E_u (u . m)^2 = |m|^2 / D for a shift m: the sorted projections differ by u . m exactly
    a = torch.randn(500, 1, 2, 2, generator=torch.Generator().manual_seed(0))  # images flatten to D = 4
    m = torch.tensor([3.0, 0.0, 0.0, 4.0]).reshape(1, 1, 2, 2)  # |m| = 5
    g = torch.Generator().manual_seed(1)
    distance = sd.sliced_wasserstein(a, a + m, n_projections=20_000, generator=g)
    # the Monte Carlo mean of (u . m)^2 over 20000 directions: relative s.e. sqrt(2/3 / 20000) ~ 0.6 %
    assert distance == pytest.approx(5 / math.sqrt(4), rel=0.02)
    assert sd.sliced_wasserstein(2 * a, 2 * a + 2 * m, n_projections=20_000, generator=torch.Generator().manual_seed(1)) == (
        pytest.approx(2 * distance, rel=1e-9)  # data units: scaling the data scales the distance
    )
    assert sd.sliced_wasserstein(a, a.flip(0)) == 0.0  # the same set in another order


@pytest.mark.parametrize(
    "a, b, kwargs, message",
    [
        (torch.zeros(4, 2), torch.zeros(5, 2), {}, r"equal shape, got \(4, 2\) and \(5, 2\)"),
        (torch.zeros(4, 2), torch.zeros(4, 2), {"n_projections": 0}, "n_projections must be an integer >= 1, got 0"),
        (torch.zeros(4), torch.zeros(4), {}, r"sample sets \(N, \*dims\)"),
    ],
)
def test_bad_inputs_are_refused_in_one_line(a, b, kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        sd.sliced_wasserstein(a, b, **kwargs)
    assert "\n" not in str(err.value)
