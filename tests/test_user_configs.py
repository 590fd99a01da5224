"""What a new user hit (issue 22, item 5), run through the apps in-process:

- 5: any sampler runs on a DDPM run's own chain steps with ``sampler/grid=discrete``; a grid that cannot
  be built from the config is one line, exit code 2, and no output directory;
"""

from __future__ import annotations

import json

import pytest
from apps import run_app
from omegaconf import OmegaConf

TINY = ["train.steps=10", "train.warmup_steps=2", "model.net.hidden_dim=16", "model.net.n_layers=1", "progress=false"]


def _summary(out_dir, name="sample_summary.json") -> dict:
    return json.loads((out_dir / name).read_text())


def _one_line_refusal(code: int, err: str, *words: str) -> None:
    assert code == 2 and err.count("\n") == 1 and all(w in err for w in words), err


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
        (["sampler=ddim", "sampler/grid=discrete", "sampler.grid.n_steps=5000"], ["sampler.grid: n_steps must be an integer in 2..1000"]),
        (["sampler=ddim", "+sampler.grid.rho=7"], ["log_snr_time_grid() takes no rho", "~sampler.grid.rho"]),
        (["sampler=ddim", "+sampler.fn.churn=1"], ["sampler.fn: ddim() takes no churn (its options: eta)"]),
        (["sampler=ddim", "sampler/grid=nope"], ["unknown sampler/grid 'nope'", "discrete, edm, log_snr, quadratic, uniform"]),
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
