"""What a new user hit (issue 22, items 4, 5 and 7b), run through the apps in-process:

- 4: one's own SDE class trains as ``sde=custom sde._target_=module.Class`` (the default group's keys
  no longer reach it); ``sde._target_`` over ``sde=vp`` and ``sde=custom`` without a class are one-line refusals;
- 5: any sampler runs on a DDPM run's own chain steps with ``sampler/grid=discrete``; a grid that cannot
  be built from the config is one line, exit code 2, and no output directory;
- 7b: ``sde-sample`` without ``sampler=`` samples with the run's own sampler (its grid and steps),
  with ``sampler.*`` overrides on top.
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from apps import run_app
from omegaconf import OmegaConf

import sde_diffusion as sd

TINY = ["train.steps=10", "train.warmup_steps=2", "model.net.hidden_dim=16", "model.net.n_layers=1", "progress=false"]

USER_MODULE = "issue22_user_paths"
USER_PATHS = '''
import math

import torch

import sde_diffusion as sd


class TrigPath(sd.GaussianPathSDE):
    """x_t = cos(pi t / 2) x_0 + sin(pi t / 2) z on [0, T], T < 1 (m(1) = 0 would make the drift singular)."""

    def __init__(self, T: float = 0.95, speed: float = 1.0):
        self.T, self.speed = T, speed

    def mean_coeff(self, t):
        return torch.cos(0.5 * math.pi * self.speed * t)

    def std(self, t):
        return torch.sin(0.5 * math.pi * self.speed * t)
'''


def _summary(out_dir, name="sample_summary.json") -> dict:
    return json.loads((out_dir / name).read_text())


def _one_line_refusal(code: int, err: str, *words: str) -> None:
    assert code == 2 and err.count("\n") == 1 and all(w in err for w in words), err


# ----------------------------------------------------------------- 4. one's own SDE: sde=custom
@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The README's recipe: a GaussianPathSDE subclass in a module of its own, importable (PYTHONPATH)."""
    (tmp_path / f"{USER_MODULE}.py").write_text(USER_PATHS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield f"{USER_MODULE}.TrigPath"
    sys.modules.pop(USER_MODULE, None)


def test_a_user_sde_trains_and_samples_with_sde_custom(user_module, tmp_path):
    run = tmp_path / "run"
    args = [
        "sde=custom",
        f"sde._target_={user_module}",
        "+sde.speed=0.9",
        *TINY,
        "eval_points=20",
        "n_samples=20",
        "sampler.grid.n_steps=10",
    ]
    code, out, err = run_app("train", *args, f"hydra.run.dir={run}", cwd=tmp_path)
    assert code == 0, err
    assert out.splitlines()[0].startswith("sde-train: checkerboard with TrigPath to step 10")
    assert OmegaConf.load(run / ".hydra" / "config.yaml").sde == {"_target_": user_module, "speed": 0.9}  # nothing of sde=vp
    assert np.isfinite(np.load(run / "samples.npz")["samples"]).all()
    assert np.isfinite(_summary(run, "summary.json")["held_out_nll_nats_per_dim"])
    trained = sd.load_run(run, "cpu")
    assert type(trained.sde).__name__ == "TrigPath" and trained.sde.speed == 0.9
    code, out, err = run_app("sample", f"run_dir={run}", "n_samples=20", f"hydra.run.dir={tmp_path / 's'}", cwd=tmp_path)
    assert code == 0, err
    assert _summary(tmp_path / "s")["nonfinite_samples"] == 0


def test_sde_target_over_the_default_group_names_sde_custom(user_module, tmp_path):
    """``sde._target_=...`` alone keeps sde=vp's beta_min and beta_max: one line with the command that works."""
    code, _, err = run_app("train", f"sde._target_={user_module}", *TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    _one_line_refusal(
        code, err, "unexpected keyword argument 'beta_min'", f"use sde=custom sde._target_={user_module}", "+sde.<key>=<value>"
    )
    assert list(tmp_path.iterdir()) == [tmp_path / f"{USER_MODULE}.py"]


def test_sde_custom_without_a_class_is_refused_in_one_line(tmp_path):
    code, _, err = run_app("train", "sde=custom", *TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    _one_line_refusal(code, err, "sde=custom sde._target_=your_module.YourPath", "+sde.<key>=<value>")
    assert list(tmp_path.iterdir()) == []
    code, _, err = run_app("train", "sde=nope", cwd=tmp_path)  # the unknown-group line points to sde=custom too
    _one_line_refusal(code, err, "unknown sde 'nope'", "custom", "or sde=custom sde._target_=your_module.YourClass")


def test_a_constructor_argument_without_plus_says_how_to_add_it(user_module, tmp_path):
    code, _, err = run_app("train", "sde=custom", f"sde._target_={user_module}", "sde.speed=0.9", *TINY, cwd=tmp_path)
    _one_line_refusal(code, err, "sde.speed", "to add it, write +sde.speed=0.9")


# ------------------------------------------------------- 5. any sampler on a DDPM run's own chain
@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddpm")
    args = ["sde=ddpm", "loss=ddpm_simple", *TINY, "eval_points=0", "n_samples=10", "sampler.grid.n_steps=5"]
    code, _, err = run_app("train", *args, f"hydra.run.dir={out / 'run'}", cwd=out)
    assert code == 0, err
    return out / "run"


@pytest.mark.parametrize("sampler, n_steps", [("ddim", 50), ("dpm_solver", 20)])
def test_any_sampler_runs_on_the_discrete_chain_with_sampler_grid_discrete(ddpm_run, tmp_path, sampler, n_steps):
    """The README's "DDIM on the discrete model": the chain's steps i/T, n_steps of them (the
    sampler's own default), so n_steps - 1 steps between them and as many network calls."""
    out = tmp_path / "out"
    args = [f"run_dir={ddpm_run}", f"sampler={sampler}", "sampler/grid=discrete", "n_samples=10", f"hydra.run.dir={out}"]
    code, stdout, err = run_app("sample", *args, cwd=tmp_path)
    assert code == 0, err
    summary = _summary(out)
    assert summary["sampler"] == sampler and summary["nfe_total"] == n_steps - 1 and summary["nonfinite_samples"] == 0
    grid = OmegaConf.load(out / ".hydra" / "config.yaml").sampler.grid
    assert grid == {"_target_": "sde_diffusion.timesteps.discrete_time_grid", "_partial_": True, "n_steps": n_steps}
    assert f"{n_steps - 1} NFE per sample" in stdout
    # the grid's own keys still take overrides
    code, _, err = run_app("sample", *args[:3], "sampler.grid.n_steps=6", "n_samples=10", f"hydra.run.dir={tmp_path / 'six'}", cwd=tmp_path)
    assert code == 0 and _summary(tmp_path / "six")["nfe_total"] == 5, err


@pytest.mark.parametrize(
    "args, words",
    [
        # the README's old form: the discrete grid under the log-SNR grid's eps
        (["sampler=ddim", "sampler.grid._target_=sde_diffusion.timesteps.discrete_time_grid"],
         ["sampler.grid: discrete_time_grid() takes no eps", "sampler/grid=discrete"]),
        (["sampler=ddim", "sampler/grid=discrete", "sampler.grid.n_steps=5000"], ["sampler.grid: n_steps must be an integer in [2, 1000]"]),
        (["sampler=ddim", "+sampler.grid.rho=7"], ["log_snr_time_grid() takes no rho", "~sampler.grid.rho"]),
        (["sampler=ddim", "+sampler.fn.churn=1"], ["sampler.fn: DDIMStep() takes no churn", "remove it with '~sampler.fn.churn'"]),
        (["sampler=ddim", "sampler/grid=nope"], ["unknown sampler/grid 'nope'", "discrete, edm, log_snr, quadratic, uniform"]),
        (["sampler/grid=discrete"], ["add sampler=<name>", "the run's own sampler"]),
    ],
)  # fmt: skip
def test_a_grid_or_sampler_the_config_cannot_build_is_one_line_and_leaves_no_directory(ddpm_run, tmp_path, args, words):
    code, out, err = run_app("sample", f"run_dir={ddpm_run}", *args, "n_samples=10", f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path)
    _one_line_refusal(code, err, *words)
    assert out == "" and list(tmp_path.iterdir()) == []


def test_sde_train_takes_the_discrete_grid_and_refuses_a_wrong_one(tmp_path):
    base = ["sde=ddpm", "loss=ddpm_simple", *TINY, "eval_points=0", "n_samples=10"]
    code, out, err = run_app("train", *base, "sampler=ddim", "sampler/grid=discrete", "sampler.grid.n_steps=5", f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)  # fmt: skip
    assert code == 0 and "10 samples by ddim (4 NFE" in out, err
    code, _, err = run_app(
        "train", *base, "sampler=ddim", "sampler/grid=discrete", f"hydra.run.dir={tmp_path / 'b'}", "sde=vp", cwd=tmp_path
    )
    _one_line_refusal(code, err, "sampler.grid: discrete_time_grid needs a discrete-time SDE")
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------- 7b. sde-sample: the run's own sampler
@pytest.fixture(scope="module")
def dpm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dpm")
    args = [*TINY, "eval_points=0", "n_samples=10", "sampler=dpm_solver", "sampler.grid.n_steps=6"]
    code, _, err = run_app("train", *args, f"hydra.run.dir={out / 'run'}", cwd=out)
    assert code == 0, err
    return out / "run"


def test_sde_sample_uses_the_runs_own_sampler_by_default(dpm_run, tmp_path):
    out = tmp_path / "own"
    code, stdout, err = run_app("sample", f"run_dir={dpm_run}", "n_samples=10", f"hydra.run.dir={out}", cwd=tmp_path)
    assert code == 0, err
    assert stdout.splitlines()[0].startswith("sde-sample: sample with dpm_solver (the run's own sampler) from step 10")
    summary = _summary(out)
    assert (summary["sampler"], summary["sampler_of_run"], summary["nfe_total"]) == ("dpm_solver", True, 6)
    # the end-of-run samples of sde-train, drawn again: the same sampler, grid, seed and n
    assert np.array_equal(np.load(out / "samples.npz")["samples"], np.load(dpm_run / "samples.npz")["samples"])


@pytest.mark.slow  # two app runs; tests/test_sampler_steps.py builds such configs in-process
def test_a_run_saved_before_the_configs_named_steps_samples_as_it_did(dpm_run, tmp_path):
    """A run's .hydra/config.yaml from before the sampler configs named step objects names the
    sampler function (sampler.fn: dpm_solver_pp, _partial_: true): sde-sample's sampler=run builds
    it and draws the run's end-of-run samples again, bit for bit, with thresholding taken too."""
    old = tmp_path / "old_run"
    shutil.copytree(dpm_run, old)
    cfg = OmegaConf.load(old / ".hydra" / "config.yaml")
    assert cfg.sampler.fn == {"_target_": "sde_diffusion.samplers.DPMSolverMultistep", "order": 2}
    cfg.sampler.fn = {"_target_": "sde_diffusion.samplers.dpm_solver_pp", "_partial_": True, "order": 2}
    OmegaConf.save(cfg, old / ".hydra" / "config.yaml")
    out = tmp_path / "out"
    code, _, err = run_app("sample", f"run_dir={old}", "n_samples=10", f"hydra.run.dir={out}", cwd=tmp_path)
    assert code == 0, err
    assert np.array_equal(np.load(out / "samples.npz")["samples"], np.load(dpm_run / "samples.npz")["samples"])
    code, _, err = run_app("sample", f"run_dir={old}", "n_samples=10", "sampler.thresholding=static", f"hydra.run.dir={tmp_path / 'clip'}", cwd=tmp_path)
    assert code == 0, err


def test_sampler_overrides_apply_on_top_of_the_runs_own_sampler(dpm_run, tmp_path):
    out = tmp_path / "three"
    code, _, err = run_app("sample", f"run_dir={dpm_run}", "sampler.grid.n_steps=3", "n_samples=10", f"hydra.run.dir={out}", cwd=tmp_path)
    assert code == 0, err
    summary = _summary(out)
    assert (summary["sampler"], summary["sampler_of_run"], summary["nfe_total"]) == ("dpm_solver", True, 3)


def test_a_named_sampler_replaces_the_runs(dpm_run, tmp_path):
    out = tmp_path / "em"
    args = [f"run_dir={dpm_run}", "sampler=euler_maruyama", "sampler.grid.n_steps=4", "n_samples=10", f"hydra.run.dir={out}"]
    code, stdout, err = run_app("sample", *args, cwd=tmp_path)
    assert code == 0, err
    assert "(the run's own sampler)" not in stdout
    summary = _summary(out)
    assert (summary["sampler"], summary["sampler_of_run"], summary["nfe_total"]) == ("euler_maruyama", False, 4)


def test_a_sweep_over_the_runs_sampler_and_another(dpm_run, tmp_path):
    args = ["-m", f"run_dir={dpm_run}", "sampler=run,ddim", "sampler.grid.n_steps=3", "n_samples=10", f"hydra.sweep.dir={tmp_path / 'm'}"]
    code, _, err = run_app("sample", *args, cwd=tmp_path)
    assert code == 0, err
    own, ddim = _summary(tmp_path / "m" / "0-run"), _summary(tmp_path / "m" / "1-ddim")
    assert (own["sampler"], own["nfe_total"], ddim["sampler"], ddim["nfe_total"]) == ("dpm_solver", 3, "ddim", 3)


def test_sde_train_refuses_sampler_run(tmp_path):
    code, _, err = run_app("train", "sampler=run", *TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    _one_line_refusal(code, err, "sampler=run takes the sampler of a trained run", "choose a sampler=<name>")
    assert list(tmp_path.iterdir()) == []
