"""Time grids: each is checked against the equation that defines it, for every SDE with a kernel."""

from __future__ import annotations

import pytest
import torch
from analytic import KernelFreeVP, all_sdes

import sde_diffusion as sd
from sde_diffusion.timesteps import check_grid, edm_time_grid, log_snr_time_grid, uniform_time_grid

SDES = all_sdes()
GRIDS = [uniform_time_grid, log_snr_time_grid, edm_time_grid]
EPS = 1e-3


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: g.__name__)
@pytest.mark.parametrize("name", SDES)
def test_every_grid_runs_from_T_to_eps_strictly_decreasing(name, grid):
    sde = SDES[name]
    ts = grid(sde, 12, EPS, dtype=torch.float64)
    assert ts.shape == (13,) and ts.dtype == torch.float64
    assert ts[0] == sde.T and ts[-1] == EPS  # exact ends: samplers start at the prior, stop at eps
    assert (ts[1:] < ts[:-1]).all()
    assert check_grid(ts) is ts


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: g.__name__)
def test_grids_honour_dtype_and_device(grid):
    ts = grid(sd.VPSDE(), 5, EPS, dtype=torch.float32, device="cpu")
    assert ts.dtype == torch.float32 and ts.device.type == "cpu"


def test_uniform_grid_has_equal_steps():
    ts = uniform_time_grid(sd.VPSDE(), 10, EPS, dtype=torch.float64)
    torch.testing.assert_close(ts.diff(), torch.full((10,), -(1.0 - EPS) / 10, dtype=torch.float64))


@pytest.mark.parametrize("name", SDES)
def test_log_snr_grid_is_uniform_in_log_snr(name):
    # bisection inverts log-SNR to ~1e-15 in t; |d logSNR / dt| <= ~1/eps, so 1e-9 is generous
    sde = SDES[name]
    ts = log_snr_time_grid(sde, 16, EPS, dtype=torch.float64)
    lam = sde.log_snr(ts)
    step = (lam[-1] - lam[0]) / 16
    torch.testing.assert_close(lam.diff(), step.expand(16), rtol=0, atol=1e-9)
    assert lam[0] == sde.log_snr(torch.tensor(sde.T, dtype=torch.float64))


@pytest.mark.parametrize("name", SDES)
def test_edm_grid_is_rho_spaced_in_sigma(name):
    # Karras et al. 2022, Eq. 5, with sigma = s/m = exp(-logSNR/2): sigma^(1/rho) is linear in i
    sde, rho = SDES[name], 7.0
    ts = edm_time_grid(sde, 16, EPS, rho=rho, dtype=torch.float64)
    m, s = sde.kernel(ts)
    root = (s / m) ** (1 / rho)
    torch.testing.assert_close(root.diff(), ((root[-1] - root[0]) / 16).expand(16), rtol=0, atol=1e-10)


def test_edm_grid_tends_to_the_log_snr_grid_as_rho_grows():
    # sigma^(1/rho) = exp(-logSNR / (2 rho)) is affine in logSNR up to O(1/rho): rho = 1e5 gives ~1e-4
    sde = sd.VESDE()
    far = edm_time_grid(sde, 10, EPS, rho=1e5, dtype=torch.float64)
    torch.testing.assert_close(far, log_snr_time_grid(sde, 10, EPS, dtype=torch.float64), rtol=0, atol=1e-3)
    assert (edm_time_grid(sde, 10, EPS, rho=7.0, dtype=torch.float64) - far).abs().max() > 0.05


@pytest.mark.parametrize("grid", [log_snr_time_grid, edm_time_grid], ids=lambda g: g.__name__)
def test_log_snr_grids_reject_eps_zero_and_sdes_without_a_kernel(grid):
    with pytest.raises(ValueError, match="eps > 0"):
        grid(sd.VPSDE(), 10, 0.0)
    with pytest.raises(ValueError, match="no perturbation kernel"):
        grid(KernelFreeVP(), 10, EPS)


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: g.__name__)
@pytest.mark.parametrize("n_steps,eps", [(0, EPS), (2.5, EPS), (10, 1.0), (10, -0.1)])
def test_grids_reject_bad_step_counts_and_eps(grid, n_steps, eps):
    with pytest.raises(ValueError):
        grid(sd.VPSDE(), n_steps, eps)


def test_edm_grid_rejects_non_positive_rho():
    with pytest.raises(ValueError, match="rho"):
        edm_time_grid(sd.VPSDE(), 10, EPS, rho=0.0)


@pytest.mark.parametrize(
    "ts,match",
    [
        (torch.tensor([0.1, 0.5, 1.0]), "decrease"),
        (torch.tensor([1.0, 0.5, 0.5]), "decrease"),
        (torch.tensor([1.0]), "N \\+ 1 >= 2"),
        (torch.ones(2, 2), "1-D"),
        (torch.tensor([1, 0]), "floating"),
        ([1.0, 0.5], "1-D"),
    ],
)
def test_check_grid_names_the_problem(ts, match):
    with pytest.raises(ValueError, match=match):
        check_grid(ts)
