"""What a new user hit (issue 15): short runs evaluated with mostly untrained EMA weights, refused
commands that changed or left run directories, interrupts, threads, progress bars and help.

The app tests run the console scripts in subprocesses from a directory outside the repository.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

import sde_diffusion as sd
from sde_diffusion.cli import _common
from sde_diffusion.app.config import ConfigError
from sde_diffusion.likelihood.evaluate import evaluate_nll
from sde_diffusion.app.runs import build_experiment
from sde_diffusion.training import load_checkpoint

TINY_BASE = [
    "train.checkpoint_every=20", "train.log_every=10", "train.warmup_steps=5", "progress=false",
    "model.net.hidden_dim=32", "model.net.n_layers=2", "n_samples=100", "sampler.grid.n_steps=10", "eval_points=0", "threads=1",
]  # fmt: skip
TINY = [*TINY_BASE, "data.n_train=2000", "data.n_test=200"]


def _app(name: str, args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    exe = shutil.which(name)
    assert exe, f"the {name} console script is not installed: pip install -e ."
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _tree_digest(root: Path) -> dict[str, str]:
    """Every file below ``root`` and its SHA-256: equal digests mean nothing was changed, added or removed."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _weights(run: Path) -> dict:
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    return {
        "step": state["step"],
        **{f"model.{k}": v for k, v in state["model"].items()},
        **{f"ema.{k}": v for k, v in state["ema"].items()},
    }


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and wa["step"] == wb["step"]
    for key in wa:
        if key != "step":
            assert torch.equal(wa[key], wb[key]), key


# ------------------------------------------------------------------------- 1. EMA of short runs
@pytest.mark.slow
def test_a_1000_step_default_run_evaluates_trained_weights():
    """The default config at 1,000 steps: the EMA model's held-out NLL lies within 0.3 nats/dim of the
    raw model's and its samples in the data's range (without the warm-up, 37 % of the average was still
    the initial network: NLL 5.1 against 2.1, samples out to |x| = 370 for data in [-4, 4])."""
    with initialize_config_module("sde_diffusion.conf", version_base=None):
        cfg = compose(config_name="config", overrides=["train.steps=1000", "progress=false", "device=cpu"])
    exp = build_experiment(cfg)
    assert exp.options.ema_warmup and exp.options.ema_decay == 0.999  # the defaults under test
    trainer = sd.Trainer(exp.score_model, exp.sde, exp.data.train, exp.options, loss_fn=exp.loss_fn, seed=int(cfg.seed))
    trainer.fit()
    test = exp.data.test
    nll = {
        name: evaluate_nll(exp.sde, model.eval(), test, n_points=200, seed=0)["nll_nats_per_dim"]
        for name, model in (("ema", trainer.ema_model), ("raw", trainer.model))
    }
    assert abs(nll["ema"] - nll["raw"]) < 0.3, nll
    x_T = exp.sde.prior_sample((500, 2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        samples = sd.euler_maruyama(exp.sde, trainer.ema_model, x_T, sd.uniform_time_grid(exp.sde, 200, eps=1e-3)).samples
    lo, hi = float(test.min()), float(test.max())
    inside = ((samples >= lo - 0.5) & (samples <= hi + 0.5)).all(dim=1).float().mean()
    assert inside > 0.98 and samples.abs().max() < 2 * max(abs(lo), abs(hi)), (inside, samples.abs().max())


# --------------------------------------------------------------------------- 2. resume, refusals
@pytest.fixture(scope="module")
def ve_run(tmp_path_factory) -> Path:
    """A finished 40-step VE run, made with overrides a resume must not need repeated."""
    root = tmp_path_factory.mktemp("ve")
    proc = _app("sde-train", [*TINY, "sde=ve", "train.steps=40", "seed=3", f"hydra.run.dir={root / 'run'}"], cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root / "run"


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, words",
    [
        (["train.resume=true", "sde=vp"], ["change sde (saved sde_diffusion.VESDE, given sde_diffusion.VPSDE)"]),
        (["train.resume=true", "sde.sigma_max=10.0"], ["sde.sigma_max (saved 50.0, given 10.0)"]),
        (["train.resume=true", "seed=0"], ["seed (saved 3, given 0)"]),
        (["train.resume=true", "train.lr=-1"], ["train.lr must be a positive number"]),
        (["train.steps=80"], ["already holds a training run", "train.resume=true"]),
    ],
)
def test_a_refused_command_leaves_the_run_directory_byte_for_byte(ve_run, tmp_path, args, words):
    before = _tree_digest(ve_run)
    proc = _app("sde-train", [f"hydra.run.dir={ve_run}", *args], cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("sde-train: error:"), proc.stderr
    for word in words:
        assert word in lines[0]
    assert _tree_digest(ve_run) == before
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_resume_needs_no_overrides_repeated_and_continues_exactly(ve_run, tmp_path):
    """A 40-step VE run resumed to 60 steps with only train.steps given equals a 60-step run."""
    run = tmp_path / "resumed"
    shutil.copytree(ve_run, run)
    proc = _app("sde-train", [f"hydra.run.dir={run}", "train.resume=true", "train.steps=60"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"sde-train: checkerboard with VESDE to step 60 on cpu, 1 thread; run directory .*", lines[0])
    assert lines[1] == "sde-train: resumed from step 40"
    assert lines[-1].startswith("sde-train: steps 40-60 (20 run here) in ")
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["steps"], summary["steps_run"], summary["resumed_from_step"]) == (60, 20, 40)
    saved = (run / ".hydra" / "config.yaml").read_text()
    assert "sde_diffusion.VESDE" in saved and "steps: 60" in saved  # the config it continued with

    reference = tmp_path / "reference"
    proc = _app("sde-train", [*TINY, "sde=ve", "train.steps=60", "seed=3", f"hydra.run.dir={reference}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    _assert_same_weights(run, reference)


@pytest.mark.parametrize(
    "args, words",
    [
        (["train.resume=true"], ["train.resume=true needs the run to continue", "hydra.run.dir="]),
        (["train.resume=true", "hydra.run.dir=nowhere"], ["holds no checkpoints/last.pt"]),
        (["-m", "train.resume=true", "seed=0,1"], ["drop -m"]),
    ],
)
def test_resume_without_a_run_to_continue_is_refused_before_anything_is_written(tmp_path, args, words):
    proc = _app("sde-train", args, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert all(word in proc.stderr for word in words), proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_refused_commands_of_every_app_leave_no_directory(ve_run, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(ve_run, broken)
    ckpt = broken / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    commands = {
        "sde-train": (["sde.beta_min=30"], "sde: beta_min (30.0) must be smaller"),
        "sde-sample": ([f"run_dir={broken}"], f"checkpoint {ckpt} cannot be read: it is truncated or corrupted; sample another run"),
        "sde-eval": ([f"run_dir={broken}"], f"checkpoint {ckpt} cannot be read: it is truncated or corrupted; evaluate another run"),
    }
    for app, (args, message) in commands.items():
        proc = _app(app, args, cwd=cwd)
        assert proc.returncode == 2 and proc.stderr.startswith(f"{app}: error: {message}"), proc.stderr
        assert proc.stderr.count("\n") == 1 and len(proc.stderr) < 250, proc.stderr
        assert list(cwd.iterdir()) == [], app  # not even outputs/<date>/
    proc = _app("sde-train", [f"hydra.run.dir={broken}", "train.resume=true"], cwd=cwd)
    assert proc.returncode == 2 and "this run cannot be resumed: start a new run" in proc.stderr


def test_discard_keeps_directories_a_run_wrote_into(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fresh = tmp_path / "outputs" / "day" / "time"
    (fresh / ".hydra").mkdir(parents=True)
    (fresh / ".hydra" / "config.yaml").write_text("a: 1\n")
    (fresh / "train.log").write_text("")
    used = tmp_path / "outputs" / "day2" / "run"
    (used / ".hydra").mkdir(parents=True)
    (used / "summary.json").write_text("{}")
    _common.discard_unused_run_dir(fresh)
    _common.discard_unused_run_dir(used)
    _common.discard_unused_run_dir(tmp_path)  # never the working directory itself
    assert not (tmp_path / "outputs" / "day").exists() and (used / "summary.json").exists()


def test_a_refused_command_run_in_process_leaves_no_log_handler_on_its_deleted_directory(tmp_path):
    """Hydra's job log is a file handler on the ``sde_diffusion`` logger; deleting a refused run's
    directory must release it, or the next line logged in this process fails on the missing file."""
    from apps import run_app

    code, _, err = run_app("train", "sde.beta_min=30", f"hydra.run.dir={tmp_path / 'refused'}", cwd=tmp_path)
    assert code == 2 and "beta_min" in err, err
    assert not (tmp_path / "refused").exists()
    logger = logging.getLogger("sde_diffusion")
    assert not [h for h in logger.handlers if isinstance(h, logging.FileHandler) and "refused" in h.baseFilename]
    logger.info("a line logged after the refusal")  # raised FileNotFoundError before the handler was released
    assert not (tmp_path / "refused").exists()


# -------------------------------------------------------------------------------- 3. interrupts
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("whole")
    proc = _app("sde-train", [*TINY, "train.steps=1500", "train.checkpoint_every=1000", f"hydra.run.dir={root / 'run'}"], cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root / "run"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_saves_a_checkpoint_that_resumes_to_the_uninterrupted_weights(uninterrupted, tmp_path, signum):
    run = tmp_path / "run"
    args = [*TINY, "train.steps=1500", "train.checkpoint_every=1000", f"hydra.run.dir={run}"]
    proc = subprocess.Popen([shutil.which("sde-train"), *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, deadline = run / "metrics.jsonl", time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):  # training is under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum and err == "", err
    step = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert 20 <= step < 1500
    assert out.splitlines()[-1] == (
        f"sde-train: stopped by {name}; checkpoint at step {step} in {run / 'checkpoints' / 'last.pt'}; "
        f"continue with: sde-train hydra.run.dir={run} train.resume=true"
    )
    proc = _app("sde-train", [f"hydra.run.dir={run}", "train.resume=true"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"sde-train: resumed from step {step}" in proc.stdout.splitlines()
    assert json.loads((run / "summary.json").read_text())["steps_run"] == 1500 - step
    _assert_same_weights(run, uninterrupted)


# -------------------------------------------------------------- 4-9. threads, sde-sample, output
@pytest.mark.slow
def test_threads_key_sets_torchs_threads_and_is_printed_first(ve_run, tmp_path):
    proc = _app("sde-sample", [f"run_dir={ve_run}", "threads=2", "n_samples=20", "batch_size=20", "sampler.grid.n_steps=5", "progress=false", f"hydra.run.dir={tmp_path / 'out'}"], cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].endswith("on cpu, 2 threads")
    assert json.loads((tmp_path / "out" / "sample_summary.json").read_text())["threads"] == 2
    for bad in (0, "many", True):
        with pytest.raises(ConfigError, match=r"threads must be an integer >= 1, got .* \(or auto"):
            _common.set_threads(bad)


@pytest.mark.slow
def test_sde_sample_takes_hydra_overrides_and_reports_the_trainings_quality_number(ve_run, tmp_path):
    out = tmp_path / "out"
    args = [
        f"run_dir={ve_run}",
        "seed=3",
        "n_samples=100",
        "batch_size=100",
        "sampler.grid.n_steps=10",
        "progress=false",
        f"hydra.run.dir={out}",
    ]
    proc = _app("sde-sample", args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "sample_summary.json").read_text())
    trained = json.loads((ve_run / "summary.json").read_text())
    # the same sampler, seed and n as sde-train's end-of-run samples: the same number
    assert summary["sliced_w2_vs_held_out"] == pytest.approx(trained["sliced_w2_vs_held_out"], rel=1e-6)
    assert f"sliced W2 to held-out data {trained['sliced_w2_vs_held_out']:.4f}" in proc.stdout
    log = (out / "sample.log").read_text()
    assert log.count("sde-sample:") == 2 + log.count("sde-sample: WARNING")  # the run's lines (and warnings), in its log


def test_sde_sample_help_lists_only_its_own_group(tmp_path):
    proc = _app("sde-sample", ["--help"], cwd=tmp_path)
    assert proc.returncode == 0
    assert "ddim, ddpm, dpm_solver" in proc.stdout and "sde: " not in proc.stdout and "data: " not in proc.stdout
    assert "--cfg job" in proc.stdout and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sde_train_help_opens_with_its_own_header_and_lists_every_group(tmp_path):
    # like sde-sample's help (issue 22: sde-train's opened with Hydra's stock "powered by Hydra" header)
    proc = _app("sde-train", ["--help"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("sde-train: train a score network") and "is powered by Hydra" not in proc.stdout
    assert "\n  sde-train sde=<name> model=<name> data=<name> train.steps=<N>\n" in proc.stdout  # the usage line
    groups = proc.stdout.split("== Config groups (group=<name>) ==\n", 1)[1].split("\n\n", 1)[0].splitlines()
    listed = {line.split(":", 1)[0]: line.split(":", 1)[1] for line in groups}
    assert list(listed) == ["sde", "model", "data", "loss", "train", "optim", "lr_schedule", "sampler", "degradation",
                            "finetune", "train_task", "experiment"]  # fmt: skip
    for group, line in listed.items():  # each with every option shipped in conf/<group>/
        assert line.split("(")[0].strip() == ", ".join(_common.group_options()[group]), group
    assert "ddpm, ddpm_cosine, edm" in listed["sde"] and "--cfg job" in proc.stdout and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sde_eval_help_says_what_its_bounds_are_of(tmp_path):
    proc = _app("sde-eval", ["--help"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("sde-eval: negative log-likelihood") and "is powered by Hydra" not in proc.stdout
    assert "neither number bounds the other" in proc.stdout and "\n  sde-eval run_dir=" in proc.stdout
    # the bound group's options (conf/bound/), then the config's keys with the chosen bound's
    assert "== Bound (bound=<name>; default ode) ==\nelbo, elbo_dequantized, latent, ode, vlb\n" in proc.stdout
    assert "_target_: sde_diffusion.likelihood.ODELikelihood" in proc.stdout and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_train_log_holds_the_runs_lines_and_samples_npz_the_raw_samples(ve_run):
    log = (ve_run / "train.log").read_text()
    assert re.search(r"^\[[\d\-: ,]+\] sde-train: checkerboard with VESDE", log, flags=re.M)
    assert re.search(r"^\[[\d\-: ,]+\] step 40/40: loss ", log, flags=re.M)
    assert re.search(r"^\[[\d\-: ,]+\] sde-train: 40 steps in ", log, flags=re.M)
    saved = dict(__import__("numpy").load(ve_run / "samples.npz"))
    assert set(saved) == {"samples"}  # checkerboard is not standardized: no raw copy to add
    summary = json.loads((ve_run / "summary.json").read_text())
    assert summary["evaluated_weights"] == "ema" and 0 < summary["ema_decay_last_step"] < 0.999
    assert summary["ema_weights"].startswith(f"decay {summary['ema_decay_last_step']:.4g} at the last step")
    assert summary["held_out_loss_raw"] > 0


@pytest.mark.slow
def test_standardized_data_saves_raw_samples(tmp_path):
    import numpy as np

    points = np.random.default_rng(0).normal(5.0, 3.0, size=(600, 2))
    np.savez(tmp_path / "points.npz", x=points)
    run = tmp_path / "run"
    args = [*TINY_BASE, "train.steps=10", "data=npz", f"data.path={tmp_path / 'points.npz'}", "data.standardize=true", f"hydra.run.dir={run}"]  # fmt: skip
    proc = _app("sde-train", args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    saved = np.load(run / "samples.npz")
    raw, std = saved["samples_raw"].astype(np.float64), saved["samples"].astype(np.float64)
    # samples_raw = samples * scale + shift per coordinate, with the training data's std (3) and mean (5)
    for j in range(2):
        scale, shift = np.polyfit(std[:, j], raw[:, j], 1)
        assert np.allclose(std[:, j] * scale + shift, raw[:, j], atol=1e-4)
        assert scale == pytest.approx(3.0, rel=0.15) and shift == pytest.approx(5.0, abs=0.5)


@pytest.mark.parametrize(
    "tty, multirun_launcher, expected",
    [(False, None, False), (True, None, True), (True, "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", False)],
)
def test_progress_bars_only_on_a_terminal_and_never_in_parallel_sweeps(monkeypatch, tty, multirun_launcher, expected):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty, raising=False)
    if multirun_launcher is None:
        monkeypatch.setattr(_common.HydraConfig, "initialized", staticmethod(lambda: False))
    else:
        from hydra.types import RunMode
        from omegaconf import OmegaConf

        fake = OmegaConf.create({"mode": RunMode.MULTIRUN, "launcher": {"_target_": multirun_launcher}})
        monkeypatch.setattr(_common.HydraConfig, "initialized", staticmethod(lambda: True))
        monkeypatch.setattr(_common.HydraConfig, "get", staticmethod(lambda: fake))
    assert _common.show_progress(True) is expected
    assert _common.show_progress(False) is False


def test_train_progress_follows_the_top_level_switch():
    with initialize_config_module("sde_diffusion.conf", version_base=None):
        assert compose(config_name="config", overrides=["progress=false"]).train.progress is False
        assert compose(config_name="config", overrides=["train.progress=false"]).train.progress is False
        assert compose(config_name="config").train.progress is True


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_stop_request_turns_the_first_signal_into_a_flag_and_restores_handlers():
    from sde_diffusion.training.interrupt import StopRequest

    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert stop.signum is None
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
