"""The sde-train app end to end, in subprocesses started outside the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from sde_diffusion.training import load_checkpoint

TINY_BASE = [
    "train.steps=40",
    "train.checkpoint_every=20",
    "train.log_every=10",
    "train.warmup_steps=5",
    "train.progress=false",
    "model.net.hidden_dim=32",
    "model.net.n_layers=2",
    "n_samples=200",
    "sampler.grid.n_steps=20",
]
TINY = TINY_BASE + ["data.n_train=2000", "data.n_test=500"]


def _sde_train(args, cwd, env=None):
    exe = shutil.which("sde-train")
    assert exe, "the sde-train console script is not installed: pip install -e ."
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def _error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.mark.slow
def test_train_end_to_end_then_resume_from_outside_the_repo(tmp_path):
    run = tmp_path / "run"
    proc = _sde_train([*TINY, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "sde-train: 40 steps" in proc.stdout and "sliced W2" in proc.stdout
    for name in ("checkpoints/last.pt", "metrics.jsonl", "samples.png", "samples.npz", "loss.png", "summary.json", ".hydra/config.yaml"):
        assert (run / name).exists(), name
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["step"] == 40 and ckpt["config"]["sde"]["_target_"] == "sde_diffusion.VPSDE"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["nfe"] == 20 and summary["n_samples"] == 200
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [10, 20, 30, 40]

    # continue the same run directory to 60 steps
    proc = _sde_train([*TINY, "train.steps=60", "train.resume=true", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 60
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [10, 20, 30, 40, 50, 60]

    # resuming with another SDE is refused before training
    proc = _sde_train([*TINY, "sde=ve", "train.steps=80", "train.resume=true", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode != 0 and len(_error_lines(proc)) == 1
    assert "change sde (saved sde_diffusion.VPSDE, given sde_diffusion.VESDE)" in proc.stderr
    # and so is another kind of weight average, whose state the checkpoint does not hold
    proc = _sde_train([*TINY, "train.ema=posthoc", "train.steps=80", "train.resume=true", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode != 0 and len(_error_lines(proc)) == 1
    assert "change train.ema (saved 'standard', given 'posthoc')" in proc.stderr


@pytest.mark.parametrize(
    "override, words",
    [  # one of each kind of error in the quick subset (-m "not slow"), every one in the suite
        (["sde=foo"], ["unknown sde 'foo'", "subvp", "ve", "vp"]),
        pytest.param(["sde.beta_min=30"], ["sde:", "beta_min (30.0) must be smaller than beta_max (20.0)"], marks=pytest.mark.slow),
        pytest.param(["sde=ve", "sde.sigma_min=100"], ["sde:", "sigma_min (100.0) must be smaller than sigma_max (50.0)"], marks=pytest.mark.slow),
        (["train.lr=-1"], ["train:", "train.lr must be a positive number"]),
        pytest.param(["data=npz"], ["data", "path"], marks=pytest.mark.slow),
        pytest.param(["train.steps=abc"], ["train.steps: Value 'abc' of type 'str' could not be converted to Integer"], marks=pytest.mark.slow),
        (["train.stpes=10"], ["train.stpes: Key 'stpes' not in 'TrainConfig'"]),
        pytest.param(["eval_points=1.5"], ["eval_points: Value '1.5' of type 'float' could not be converted to Integer"], marks=pytest.mark.slow),
        pytest.param(["-m", "seed=0,1", "train.foo=1"], ["train.foo: Key 'foo' not in 'TrainConfig'"], marks=pytest.mark.slow),
        pytest.param(["optim=adamw", "optim.weight_decay=-1"], ["optim:", "weight_decay"], marks=pytest.mark.slow),
    ],
)
def test_invalid_config_fails_at_start_with_one_line(tmp_path, override, words):
    proc = _sde_train([*TINY_BASE, *override, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    lines = _error_lines(proc)
    assert proc.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("sde-train: error:"), proc.stderr
    for word in words:
        assert word in lines[0]
    assert not (tmp_path / "run" / "checkpoints").exists()  # failed before any training


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on machines without a GPU")
def test_cuda_without_a_gpu_is_one_clear_line(tmp_path):
    proc = _sde_train([*TINY, "device=cuda", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    lines = _error_lines(proc)
    assert proc.returncode != 0 and len(lines) == 1 and "device=cuda" in lines[0] and "device=cpu" in lines[0]


@pytest.mark.slow
def test_a_users_own_sde_trains_and_samples_without_editing_the_library(tmp_path):
    """A class in the user's own module, named by sde._target_, goes through loss, trainer and sampler."""
    (tmp_path / "my_sdes.py").write_text(
        textwrap.dedent(
            '''
            import torch
            import sde_diffusion as sd

            class ConstantRateVP(sd.SDE):
                """VP with constant beta: dx = -beta x/2 dt + sqrt(beta) dw."""
                def __init__(self, beta: float = 10.0):
                    self.beta = beta
                prior_std = 1.0
                def drift(self, x, t):
                    return -0.5 * self.beta * x
                def diffusion(self, t):
                    return torch.full_like(torch.as_tensor(t), self.beta ** 0.5)
                def kernel(self, t):
                    t = torch.as_tensor(t)
                    return torch.exp(-0.5 * self.beta * t), torch.sqrt(-torch.expm1(-self.beta * t))
            '''
        )
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = tmp_path / "run"
    args = [*TINY, "sde=quadratic_vp", "~sde.beta_min", "~sde.beta_max", "sde._target_=my_sdes.ConstantRateVP", "+sde.beta=10.0"]
    proc = _sde_train([*args, "sampler=dpm_solver", "sampler.grid.n_steps=10", f"hydra.run.dir={run}"], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "summary.json").read_text())["nfe"] == 10


@pytest.mark.slow
def test_the_shipped_custom_sde_example_runs_in_the_app(tmp_path):
    run = tmp_path / "run"
    proc = _sde_train([*TINY, "sde=quadratic_vp", "loss=dsm_importance", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "QuadraticVPSDE" in (run / ".hydra" / "config.yaml").read_text()


def test_module_entry_point_matches_console_script(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sde_diffusion.cli.train", *TINY, "train.steps=5", "sde=foo"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "unknown sde 'foo'" in proc.stderr
