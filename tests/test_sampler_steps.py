"""Samplers configured as steps (issue 23, item 4): the sampler configs build step objects, a step
called as a sampler runs on the driver, a sampler function's order is its step's, what runs on the
driver is known by type (no signature inspection), and the configs of earlier runs, which name the
sampler functions, still build and sample the same."""

from __future__ import annotations

import ast
import functools
import importlib.resources
import inspect
import math

import pytest
import torch
from apps import train_config
from omegaconf import OmegaConf

import sde_diffusion as sd
from sde_diffusion import config
from sde_diffusion import samplers as S
from sde_diffusion.app.config import ConfigError, build_sampler, build_sde

F64 = torch.float64
SHIPPED = sorted(e.name.removesuffix(".yaml") for e in (importlib.resources.files("sde_diffusion.conf") / "sampler").iterdir() if e.name.endswith(".yaml"))
OFF_DRIVER = {"ode": S.probability_flow_sampler, "torchsde": S.torchsde_sampler}
"""The shipped samplers that are not steps: torchdiffeq's and torchsde's solvers."""

_pc = functools.partial(S.predictor_corrector, denoise=True)
DIRECT = {
    "ddim": functools.partial(S.ddim, eta=0.0),
    "ddpm": functools.partial(S.ddpm, variance="large"),
    "dpm_solver": functools.partial(S.dpm_solver_pp, order=2),
    "dpm_solver_2s": S.dpm_solver_2s,
    "dpm_solver_3m": functools.partial(S.dpm_solver_pp, order=3),
    "dpm_solver_noise": functools.partial(S.dpm_solver_pp, order=3, prediction="noise"),
    "dpm_solver_sde": functools.partial(S.dpm_solver_sde, order=2),
    "edm_sde": functools.partial(S.edm_sde, S_churn=40.0, S_tmin=0.05, S_tmax=50.0, S_noise=1.003),
    "euler_maruyama": S.euler_maruyama,
    "heun": S.heun,
    "ipndm": functools.partial(S.ipndm, order=4, coefficients="variable"),
    "unipc": functools.partial(S.unipc, order=2, variant="bh2", corrector=True),
    "pc": functools.partial(_pc, predictor=S.ReverseDiffusionPredictor(), corrector=S.LangevinCorrector(0.16, 1, "batch")),
    "ancestral": functools.partial(_pc, predictor=S.AncestralPredictor("posterior"), corrector=S.NoCorrector()),
    "annealed_langevin": functools.partial(_pc, predictor=S.NoPredictor(), corrector=S.AnnealedLangevinCorrector(0.1, 10)),
    "langevin": functools.partial(_pc, predictor=S.NoPredictor(), corrector=S.LangevinCorrector(0.16, 2, "batch")),
    "reverse_diffusion": functools.partial(_pc, predictor=S.ReverseDiffusionPredictor(), corrector=S.NoCorrector()),
}
"""Every shipped step config as the sampler function call it stands for, with the config's options."""

DIST = sd.GaussianMixture([1.0, 2.0], torch.tensor([[-1.0, 0.5], [1.5, -0.5]], dtype=F64), torch.tensor([0.3, 0.2], dtype=F64))


def _sample(sampler, sde: sd.SDE, ts: torch.Tensor) -> S.SamplerOutput:
    """``sampler`` on 8 prior points with per-sample noise: the same seeds every call."""
    x = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    return sampler(sde, DIST.score_fn(sde), x, ts, generator=S.PerSampleNoise(3, torch.arange(8)))


def _built(option: str, *overrides: str):
    """``(sampler, sde, ts)`` of ``sampler=option`` as the apps build it, on a grid of at most 9 steps."""
    cfg = train_config(f"sampler={option}", *(["sde=ddpm"] if option == "ddpm" else []), *overrides)
    sde = build_sde(cfg)
    sampler, grid = build_sampler(cfg, sde)
    ts = grid(sde, dtype=F64)
    return sampler, sde, ts[:: max(1, (len(ts) - 1) // 8)] if len(ts) > 10 else ts


class ShrinkStep(S.Step):
    """A user's own step: ``x_{i+1} = m_{i+1} x0_hat + (s_{i+1} / s_i) (x_i - m_i x0_hat)``, the
    deterministic DDIM step written by hand, to be named in a config."""

    order = 1
    name = "shrink"

    def step(self, solve, i, x, order_cap):
        m, s, _ = solve.tables()
        x0 = solve.predict_at(x, i).x0
        return m[i + 1] * x0 + (s[i + 1] / s[i]) * (x - m[i] * x0), x0


def test_every_sampler_config_is_a_step_or_a_solver_off_the_driver():
    assert set(SHIPPED) == {*DIRECT, *OFF_DRIVER, "run"}  # a new config joins DIRECT or OFF_DRIVER
    for option in DIRECT:
        cfg = train_config(f"sampler={option}")
        assert "_partial_" not in cfg.sampler.fn, option
        sampler = _built(option)[0]
        assert isinstance(sampler.func if isinstance(sampler, functools.partial) else sampler, S.Step), option
    for option, fn in OFF_DRIVER.items():
        sampler = _built(option)[0]
        assert sampler.func is fn and not S.on_driver(sampler)


@pytest.mark.parametrize("option", sorted(DIRECT))
def test_the_config_built_step_samples_as_the_function_call_bit_for_bit(option):
    """The config's step, with the config's driver options (denoise_to_zero), gives the samples and
    NFE of the sampler function called with the same options, on the same seeds."""
    sampler, sde, ts = _built(option)
    denoise = {"denoise_to_zero": True} if OmegaConf.select(train_config(f"sampler={option}"), "sampler.denoise_to_zero") else {}
    by_config, direct = _sample(sampler, sde, ts), _sample(functools.partial(DIRECT[option], **denoise), sde, ts)
    assert torch.equal(by_config.samples, direct.samples) and by_config.nfe == direct.nfe


@pytest.mark.parametrize(
    "option, node",
    [
        ("dpm_solver", {"_target_": "sde_diffusion.samplers.dpm_solver_pp", "_partial_": True, "order": 2}),
        ("ddim", {"_target_": "sde_diffusion.samplers.ddim", "_partial_": True, "eta": 0.0}),
        ("ddpm", {"_target_": "sde_diffusion.samplers.ddpm", "_partial_": True, "variance": "large"}),
        ("pc", {"_target_": "sde_diffusion.samplers.predictor_corrector", "_partial_": True, "denoise": True,
                "predictor": {"_target_": "sde_diffusion.samplers.ReverseDiffusionPredictor"},
                "corrector": {"_target_": "sde_diffusion.samplers.LangevinCorrector", "snr": 0.16, "n_steps": 1, "norm": "batch"}}),
    ],
)  # fmt: skip
def test_a_saved_config_that_names_the_sampler_function_still_samples_the_same(option, node):
    """A run's .hydra/config.yaml written before the configs named steps (sde-sample's sampler=run
    reads it): its sampler function builds, is known to run on the driver (it takes
    sampler.thresholding), and samples as the step config does."""
    sampler, sde, ts = _built(option)
    cfg = train_config(f"sampler={option}", *(["sde=ddpm"] if option == "ddpm" else []), "sampler.thresholding=static", "sampler.data_range=[-5,5]")
    cfg.sampler.fn = OmegaConf.create(node)
    old, _ = build_sampler(cfg, sde)
    assert S.on_driver(old) and isinstance(old.keywords["x0_correction"], S.StaticThreshold)
    assert torch.equal(_sample(old, sde, ts).samples, _sample(functools.partial(sampler, x0_correction=S.StaticThreshold((-5.0, 5.0))), sde, ts).samples)


def test_a_users_own_step_in_a_config_runs_on_the_driver():
    """Named by _target_, a Step subclass is a sampler on the driver: it takes sampler.thresholding
    and sampler.denoise_to_zero, and gives DDIM's deterministic samples (the same step)."""
    sampler, sde, ts = _built("ddim", f"sampler.fn._target_={__name__}.ShrinkStep", "~sampler.fn.eta", "sampler.denoise_to_zero=true")
    assert isinstance(sampler.func, ShrinkStep) and S.on_driver(sampler)
    out, ddim = _sample(sampler, sde, ts), _sample(functools.partial(S.ddim, denoise_to_zero=True), sde, ts)
    torch.testing.assert_close(out.samples, ddim.samples, rtol=1e-12, atol=1e-12)
    assert out.nfe == ddim.nfe == len(ts)
    sampler, *_ = _built("ddim", f"sampler.fn._target_={__name__}.ShrinkStep", "~sampler.fn.eta", "sampler.thresholding=static")
    assert isinstance(sampler.keywords["x0_correction"], S.StaticThreshold)


def test_what_runs_on_the_driver_is_known_by_type_not_by_signature():
    def looks_like_one(sde, score_fn, x, ts, **driver):  # the old signature rule would have taken it
        return S.SamplerOutput(x, 0)

    assert S.on_driver(S.DDIMStep()) and S.on_driver(functools.partial(ShrinkStep(), denoise_to_zero=True))
    assert S.on_driver(S.ddim) and S.on_driver(functools.partial(S.predictor_corrector, denoise=False))
    assert not S.on_driver(looks_like_one) and not S.on_driver(S.probability_flow_sampler) and not S.on_driver(S.torchsde_sampler)
    with pytest.raises(ConfigError, match=r"^sampler.thresholding need a fixed-grid sampler .* is not one$"):
        build_sampler(train_config("sampler=ode", "sampler.thresholding=static"))


def test_the_config_layer_inspects_no_signatures():
    tree = ast.parse(inspect.getsource(config))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    assert "inspect" not in imported and not any(isinstance(n, ast.Name) and n.id == "inspect" for n in ast.walk(tree))


@pytest.mark.parametrize(
    "overrides, sde, message",
    [
        (["sampler=ddim", "+sampler.fn.churn=1"], None, "sampler.fn: DDIMStep() takes no churn; remove it with '~sampler.fn.churn'"),
        (["sampler=pc", "+sampler.fn.snr=0.1"], None, "sampler.fn: PredictorCorrectorStep() takes no snr; remove it with '~sampler.fn.snr'"),
        (["sampler=ddim", "+sampler.grid.rho=7"], sd.VPSDE(), "sampler.grid: log_snr_time_grid() takes no rho; choose the grid as "
         "sampler/grid=log_snr, which brings its own keys only, instead of by sampler.grid._target_; or remove it with '~sampler.grid.rho'"),
        (["sampler=ddim", "sampler.grid._target_=sde_diffusion.timesteps.check_grid", "sampler.n_steps=3"], sd.VPSDE(),
         "sampler.n_steps: the grid check_grid takes no n_steps; remove sampler.n_steps or choose a sampler/grid=<name>"),
        (["sampler=ddim", "sampler.fn.eta=2"], None, "sampler.fn: eta must lie in [0, 1], got 2 (0: deterministic DDIM, 1: DDPM)"),
    ],
)  # fmt: skip
def test_a_key_the_step_or_grid_does_not_take_is_refused_in_one_line(overrides, sde, message):
    with pytest.raises(ConfigError) as refused:
        build_sampler(train_config(*overrides), sde)
    assert str(refused.value) == message


def test_a_sampler_functions_order_is_its_steps():
    """Declared once, on the step: the function's order is its default step's (edm_sde's, the step
    with churn) and the function names the class of the steps it runs."""
    pairs = [
        (S.ddim, S.DDIMStep()), (S.ddpm, S.DDPMStep()), (S.heun, S.EDMStep()), (S.edm_sde, S.EDMStep(S_churn=1.0)),
        (S.dpm_solver_pp, S.DPMSolverMultistep()), (S.dpm_solver_2s, S.DPMSolverSinglestep2S()), (S.dpm_solver_sde, S.DPMSolverSDE()),
        (S.unipc, S.UniPCStep()), (S.ipndm, S.IPNDMStep()), (S.euler_maruyama, S.EulerMaruyamaStep()),
    ]  # fmt: skip
    for fn, step in pairs:
        assert fn.order == step.order and fn.step_type is type(step), fn.__name__
    assert S.predictor_corrector.step_type is S.PredictorCorrectorStep and not hasattr(S.predictor_corrector, "order")


def test_a_step_called_as_a_sampler_is_the_driver_with_the_steps_defaults():
    sde = sd.VPSDE()
    ts = sd.log_snr_time_grid(sde, 6, 1e-3, dtype=F64)
    step = S.DPMSolverMultistep(3)
    direct = _sample(functools.partial(S.sample_on_grid, step), sde, ts)
    assert torch.equal(_sample(step, sde, ts).samples, direct.samples)
    ddpm = sd.DDPMSDE()
    grid = sd.discrete_time_grid(ddpm, 5, dtype=F64)
    assert _sample(S.DDPMStep(), ddpm, grid).nfe == 5 and _sample(functools.partial(S.DDPMStep(), denoise_to_zero=False), ddpm, grid).nfe == 4
    pc = S.PredictorCorrectorStep(S.ReverseDiffusionPredictor(), S.NoCorrector(), denoise=True)
    assert _sample(pc, sde, ts).nfe == 7 and _sample(S.PredictorCorrectorStep(S.ReverseDiffusionPredictor(), S.NoCorrector()), sde, ts).nfe == 6
    with pytest.raises(ValueError, match="NoPredictor and NoCorrector does nothing"):  # refused when built, as a config builds it
        S.PredictorCorrectorStep(S.NoPredictor(), S.NoCorrector())


EDM_VALUES = "EDM's ImageNet values: S_churn=40, S_tmin=0.05, S_tmax=50, S_noise=1.003"


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: S.DDIMStep(eta=1.5), "eta must lie in [0, 1], got 1.5 (0: deterministic DDIM, 1: DDPM)"),
        (lambda: S.DPMSolverMultistep(4), "order must be an integer in [1, 3], got 4 (1: DPM-Solver++(1) = DDIM, 2: 2M, 3: 3M)"),
        (lambda: S.DPMSolverSDE(3), "order must be an integer in [1, 2], got 3 (2: SDE-DPM-Solver++(2M))"),
        (lambda: S.IPNDMStep(5), "order must be an integer in [1, 4], got 5 (iPNDM uses 4)"),
        (lambda: S.UniPCStep(0), "order must be an integer in [1, 3], got 0 (UniPC-p; 2 for guided sampling, 3 unconditional)"),
        (lambda: S.EDMStep(S_churn=-1.0), f"S_churn must be a number >= 0, got -1.0 ({EDM_VALUES})"),
        (lambda: S.EDMStep(S_noise=math.nan), f"S_noise must be a number >= 0, got nan ({EDM_VALUES})"),
        (lambda: S.LangevinCorrector(snr=0.0), "snr must be a positive number, got 0.0 (0.16 for VE, 0.01 for VP)"),
        (lambda: S.LangevinCorrector(n_steps=1.5), "n_steps must be an integer >= 1, got 1.5 (use NoCorrector for none)"),
        (lambda: S.AnnealedLangevinCorrector(step_size=math.inf), "step_size must be a positive number, got inf (NCSN's is 0.1)"),
        (lambda: S.cold_sample(_same, _same, torch.zeros(1, 2), n_steps=0), "n_steps must be an integer >= 1, got 0 (the restorer's calls; 20 is usual)"),
        (lambda: S.cold_sample(_same, _same, torch.zeros(1, 2), t_start=0.0), "t_start must lie in (0, 1], got 0.0 (1: from the fully degraded image)"),
        (lambda: S.sdedit(sd.VPSDE(), _same, torch.zeros(1, 2), 1.5, sd.uniform_time_grid(sd.VPSDE(), 4, 1e-3), sampler=S.ddim),
         "t0 must lie in [0, 1], got 1.5 (from t = 0 up to the grid's start ts[0]; 0.5 is a usual start)"),
        (lambda: S.probability_flow_sampler(sd.VPSDE(), _same, torch.zeros(1, 2), torch.tensor([1.0, 0.5]), method="euler", step_size=-0.1),
         "step_size must be a positive number, got -0.1 (its sign follows the direction of ts)"),
    ],
)  # fmt: skip
def test_sampler_options_are_checked_by_the_one_helper(build, message):
    """The samplers' range checks are check_range's: '<name> must <bounds>, got <value> (<hint>)'."""
    with pytest.raises(ValueError) as refused:
        build()
    assert str(refused.value) == message


def _same(x, t):
    return x
