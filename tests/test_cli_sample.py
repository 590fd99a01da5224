"""sde-sample: its samples are a direct sampler call on the run's EMA model, its files, its errors.

One tiny sde-train run per module (a subprocess, ~10 s). The app's logic runs in-process on configs
composed with Hydra's compose API; two subprocesses check the console entry point from outside the
repository (a sweep over two samplers, and an error).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from analytic import KernelFreeVP, gaussian, gaussian_marginal_cov
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

import sde_diffusion as sd
from sde_diffusion import samplers as S
from sde_diffusion.cli import sample as app
from sde_diffusion.cli._common import group_options
from sde_diffusion.distances import sliced_w2_to_held_out
from sde_diffusion.tasks.score import grid_labels as _grid_labels
from sde_diffusion.app.config import ConfigError, build_sampler
from sde_diffusion.app.plotting import _tile_images, image_grid
from sde_diffusion.app.runs import build_experiment
from sde_diffusion.samplers import draw
from sde_diffusion.training import CheckpointError, Trainer

SAMPLE = [sys.executable, "-m", "sde_diffusion.cli.sample"]
TRAIN = [sys.executable, "-m", "sde_diffusion.cli.train", "train.steps=30", "train.progress=false", "n_samples=50",
         "sampler.grid.n_steps=20"]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 30-step sde-train run on the 2-D checkerboard (VP SDE, eps-parameterized MLP)."""
    out = tmp_path_factory.mktemp("train")
    subprocess.run([*TRAIN, f"hydra.run.dir={out}"], check=True, capture_output=True, text=True, timeout=300)
    return out


def _compose(*overrides, config="sample", **kwargs):
    with initialize_config_module("sde_diffusion.conf", version_base=None):
        return compose(config, overrides=list(overrides), **kwargs)


def _sample_config(run_dir, *overrides, **kwargs):
    return _compose(f"run_dir={run_dir}", "progress=false", "device=cpu", *overrides, **kwargs)


def _sample(run_dir, out_dir, sampler, *overrides):
    return app.run(_sample_config(run_dir, f"sampler={sampler}", *overrides), out_dir, sampler_name=sampler)


def _copy_run(run_dir, dest, **changes):
    """A copy of ``run_dir`` whose saved config has ``changes`` (dotted keys) applied."""
    shutil.copytree(run_dir, dest)
    cfg = OmegaConf.load(dest / ".hydra" / "config.yaml")
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value, merge=False)
    OmegaConf.save(cfg, dest / ".hydra" / "config.yaml")
    return dest


# ------------------------------------------------------------------------- samples and files
@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["euler_maruyama", "pc", "dpm_solver_sde", "edm_sde", "ddim"])
def test_samples_do_not_depend_on_the_batch_size(run_dir, tmp_path, sampler):
    """Per-sample noise streams (and per-sample prior blocks): the same samples, bit for bit, whether
    drawn 100 or 300 at a time, for stochastic samplers too (ddim with eta = 1). pc's shipped
    Langevin step uses batch-mean norms (norm: batch), which by design couple a batch's samples;
    with per-sample norms it is batch-independent too."""
    extra = {"ddim": ["sampler.fn.eta=1.0"], "pc": ["sampler.fn.corrector.norm=sample"]}.get(sampler, [])
    samples = []
    for batch in (100, 300):
        out = tmp_path / str(batch)
        _sample(run_dir, out, sampler, "n_samples=300", f"batch_size={batch}", "sampler.grid.n_steps=6", *extra)
        samples.append(np.load(out / "samples.npz")["samples"])
    assert np.array_equal(samples[0], samples[1])
    other = tmp_path / "seed"
    _sample(run_dir, other, sampler, "n_samples=300", "batch_size=300", "sampler.grid.n_steps=6", "seed=1", *extra)
    assert not np.array_equal(np.load(other / "samples.npz")["samples"], samples[0])


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["euler_maruyama", "dpm_solver"])
def test_samples_equal_a_direct_sampler_call_on_the_ema_model(run_dir, tmp_path, capsys, sampler):
    summary = _sample(run_dir, tmp_path, sampler, "n_samples=40", "batch_size=25", "seed=7", "sampler.grid.n_steps=8")
    saved = np.load(tmp_path / "samples.npz")

    # the documented recipe written out by hand: one prior block, each sample's own noise stream
    trained = sd.load_run(run_dir, "cpu")
    fn, grid = build_sampler(_sample_config(run_dir, f"sampler={sampler}", "sampler.grid.n_steps=8"))
    ts = grid(trained.sde, dtype=torch.float32)
    prior = torch.Generator().manual_seed(draw.stream_seed(7, draw.PRIOR, 0))
    x_T = trained.sde.prior_sample((draw.PRIOR_BLOCK, 2), generator=prior)[:40]
    expected = []
    for lo, hi in [(0, 25), (25, 40)]:
        noise = S.PerSampleNoise(draw.stream_seed(7, draw.NOISE, 0), torch.arange(lo, hi))
        expected.append(fn(trained.sde, trained.score_model, x_T[lo:hi], ts, generator=noise).samples)

    assert saved["samples"].dtype == np.float32 and saved["samples"].shape == (40, 2)
    # the same operations on the same inputs: bit for bit
    torch.testing.assert_close(torch.from_numpy(saved["samples"]), torch.cat(expected), rtol=0, atol=0)
    assert saved["nfe_per_sample"].tolist() == [8] * 40 and int(saved["nfe"]) == 16
    assert float(saved["seconds"]) > 0 and "samples_raw" not in saved
    assert json.loads((tmp_path / "sample_summary.json").read_text()) == summary
    assert summary["nfe_per_batch"] == [8, 8] and summary["checkpoint_step"] == 30
    assert (tmp_path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first, *warnings, line = capsys.readouterr().out.strip().splitlines()  # the start line (threads), then the result
    assert all(w.startswith("sde-sample: WARNING: the samples leave the data's range") for w in warnings) and len(warnings) <= 1
    assert bool(warnings) == summary["sample_range"]["material"]
    assert re.fullmatch(rf"sde-sample: sample with {sampler} from step 30 of .* on cpu, \d+ threads?", first)
    assert re.search(rf"40 samples by {sampler} .*: 8 NFE per sample \(16 batched evaluations\), \d+\.\d\d s", line)
    assert f"sliced W2 to held-out data {summary['sliced_w2_vs_held_out']:.4f}" in line


@pytest.mark.slow
def test_other_seeds_give_other_samples_the_same_seed_the_same(run_dir, tmp_path):
    draw = []
    for i, seed in enumerate([0, 0, 1]):
        _sample(run_dir, tmp_path / str(i), "euler_maruyama", "n_samples=8", f"seed={seed}", "sampler.grid.n_steps=4")
        draw.append(np.load(tmp_path / str(i) / "samples.npz")["samples"])
    assert np.array_equal(draw[0], draw[1])
    assert not np.isclose(draw[0], draw[2]).any()


def test_prior_blocks_do_not_depend_on_the_split():
    sde = sd.VESDE()
    whole = draw.PriorBlocks(sde, (1, 8, 8), seed=3).take(0, 600)
    blocks = draw.PriorBlocks(sde, (1, 8, 8), seed=3)
    pieces = torch.cat([blocks.take(lo, min(lo + 97, 600)) for lo in range(0, 600, 97)])
    assert whole.shape == (600, 1, 8, 8) and torch.equal(whole, pieces)
    # N(0, sigma_max^2): the std of 38400 normal values has standard error sigma / sqrt(2 n); 5 of those
    n = whole.numel()
    assert abs(whole.std() / sde.prior_std - 1.0) < 5 / (2 * n) ** 0.5
    assert not torch.isclose(whole, draw.PriorBlocks(sde, (1, 8, 8), seed=4).take(0, 600)).any()


@pytest.mark.parametrize("event_shape", [None, (1, 8, 8)], ids=["points", "images"])
def test_exact_score_samples_have_the_data_law_whatever_the_batch_size(event_shape):
    dim = 2 if event_shape is None else 64
    data_shape = (dim,) if event_shape is None else event_shape
    dist, sde, eps, n = gaussian(dim, event_shape=event_shape), sd.VPSDE(), 1e-3, 2000
    fn = partial(sd.dpm_solver_pp, order=2)
    grid = partial(sd.log_snr_time_grid, n_steps=100, eps=eps)
    sample = partial(draw.draw_samples, sde, dist.score_fn(sde), fn, grid, data_shape, n, seed=0, dtype=torch.float64)
    one, many = sample(batch_size=n), sample(batch_size=300)
    assert one.samples.shape == (n, *data_shape) and one.samples.dtype == torch.float64
    assert one.nfe.tolist() == [100] * n and many.batch_nfe == [100] * 7
    # a deterministic sampler on batch-independent prior noise; float64 round-off only
    torch.testing.assert_close(one.samples, many.samples, rtol=0, atol=1e-10)

    # whitened by the exact marginal at eps, the samples are N(0, I): each coordinate's mean has
    # standard error 1/sqrt(n) and the mean squared norm / d has sqrt(2/(n d)); 5 standard errors.
    # The solver's bias is second order in the step: on this 64-D Gaussian (eigenvalues down to 0.1)
    # the squared norm is off by 0.026 at 20 steps, 0.0045 at 50, 0.0003 at 200, so 100 steps keep
    # it near 0.001, a tenth of the tolerance 0.0125
    chol = torch.linalg.cholesky(gaussian_marginal_cov(dist, sde, eps))
    m, _ = sde.kernel(torch.tensor(eps, dtype=torch.float64))
    centred = one.samples.reshape(n, dim) - m * dist.means[0]
    z = torch.linalg.solve_triangular(chol, centred.T, upper=False).T
    assert z.mean(0).abs().max() < 5 / n**0.5
    assert abs(z.pow(2).sum(1).mean() / dim - 1) < 5 * (2 / (n * dim)) ** 0.5


def test_image_runs_write_an_image_grid(tmp_path):
    images = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    np.savez(tmp_path / "images.npz", x=images.numpy())
    cfg = _compose(
        "data=npz", f"data.path={tmp_path / 'images.npz'}", "train.steps=2", "train.progress=false",
        "model.net.hidden_dim=16", "model.net.n_layers=1", "train.batch_size=8", "device=cpu", config="config",
    )  # fmt: skip
    exp = build_experiment(cfg)
    run = tmp_path / "run"
    Trainer(exp.score_model, exp.sde, exp.data.train, exp.options, loss_fn=exp.loss_fn, run_dir=run).fit()
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")

    summary = _sample(run, tmp_path / "out", "ddim", "n_samples=10", "batch_size=4", "sampler.grid.n_steps=3")
    saved = np.load(tmp_path / "out" / "samples.npz")
    assert saved["samples"].shape == (10, 1, 8, 8) and summary["nfe_per_batch"] == [3, 3, 3]
    picture = matplotlib.image.imread(tmp_path / "out" / "samples.png")
    assert picture.ndim == 3 and min(picture.shape[:2]) > 100


def test_tiles_sit_row_major_on_a_white_background():
    images = torch.arange(5 * 3 * 2 * 3, dtype=torch.float32).reshape(5, 3, 2, 3) / 45 - 0.5  # values in [-0.5, 1.5]
    tiled = _tile_images(images, n_cols=3, value_range=(-0.5, 1.0), pad=1)
    assert tiled.shape == (3, 1 + 2 * 3, 1 + 3 * 4)
    expected = ((images + 0.5) / 1.5).clamp(0, 1)
    for i in range(5):
        r, c = divmod(i, 3)
        assert torch.equal(tiled[:, 1 + 3 * r : 3 + 3 * r, 1 + 4 * c : 4 + 4 * c], expected[i])
    assert (tiled[:, 4:, 9:] == 1).all()  # the sixth slot is empty
    assert (tiled[:, 0] == 1).all() and (tiled[:, :, 4] == 1).all()  # padding rows and columns


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"samples": torch.zeros(4, 8, 8)}, r"\(N, C, H, W\)"),
        ({"value_range": (1.0, 1.0)}, "value_range"),
        ({"max_images": 0}, "max_images"),
    ],
)
def test_image_grid_rejects_bad_input(tmp_path, kwargs, message):
    args = {"samples": torch.zeros(4, 1, 8, 8), **kwargs}
    with pytest.raises(ValueError, match=message):
        image_grid(args.pop("samples"), tmp_path / "grid.png", **args)


# -------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("sampler", [o for o in group_options()["sampler"] if o != "run"])  # run: the run's own (test_user_configs)
def test_every_sampler_composes_and_its_grid_can_be_overridden(sampler):
    fn, grid = build_sampler(_compose(f"sampler={sampler}", "sampler.grid.n_steps=50"))
    if sampler == "ddpm":  # the chain's own steps: n_steps times of a discrete-time SDE
        assert callable(fn) and grid(sd.DDPMSDE()).shape == (50,)
        return
    assert callable(fn) and grid(sd.VPSDE()).shape == (51,)


def test_default_output_directories_name_the_sampler():
    cfg = _compose("sampler=heun", return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        assert re.fullmatch(r"outputs/sample/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-heun", cfg.hydra.run.dir)
        assert cfg.hydra.job.chdir is False  # sweep directories: see the sweep test below
    finally:
        HydraConfig.instance().cfg = None


# --------------------------------------------------------------------------------- errors
@pytest.mark.slow
@pytest.mark.parametrize(
    "override, message",
    [
        ("n_samples=0", "n_samples must be an integer >= 1"),
        ("batch_size=0", "batch_size must be an integer >= 1"),
        ("seed=-1", "seed must be an integer >= 0"),
        ("sampler.grid.n_steps=0", "sampler.grid: n_steps must be an integer >= 1"),
    ],
)
def test_bad_options_are_refused(run_dir, tmp_path, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _sample(run_dir, tmp_path, "euler_maruyama", override)


@pytest.mark.parametrize(
    "override, message",
    [
        ("n_samples=2.5", "n_samples: Value '2.5' of type 'float' could not be converted to Integer"),
        ("n_samples=true", "n_samples: Value 'True' of type 'bool' could not be converted to Integer"),
        ("progress=maybe", "progress: Value 'maybe' is not a valid bool"),
        ("nsamples=10", "Key 'nsamples' not in 'SampleAppConfig'"),
    ],
)
def test_wrong_types_and_unknown_keys_fail_at_compose_time_in_one_line(monkeypatch, capsys, tmp_path, override, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["sde-sample", "run_dir=x", override])
    with pytest.raises(SystemExit) as exit_info:
        app.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith(f"sde-sample: error: {message}"), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_missing_or_incomplete_run_directories_are_refused(run_dir, tmp_path):
    with pytest.raises(ConfigError, match="run_dir is required"):
        app.run(_compose("progress=false"), tmp_path)
    with pytest.raises(ConfigError, match="is not a directory"):
        _sample(tmp_path / "nowhere", tmp_path, "ddim")
    (tmp_path / "no_ckpt").mkdir()
    shutil.copytree(run_dir / ".hydra", tmp_path / "no_ckpt" / ".hydra")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        _sample(tmp_path / "no_ckpt", tmp_path, "ddim")


@pytest.mark.slow
def test_samplers_that_need_a_kernel_are_refused_on_an_sde_without_one(run_dir, tmp_path):
    run = _copy_run(
        run_dir,
        tmp_path / "kernel_free",
        sde={"_target_": f"{KernelFreeVP.__module__}.{KernelFreeVP.__qualname__}"},
        **{"model.parameterization._target_": "sde_diffusion.ScoreParameterization"},
    )
    for sampler, key in (("dpm_solver", r"sampler\.grid"), ("ancestral", "sampler=ancestral")):  # the grid refuses, the sampler refuses
        with pytest.raises(ConfigError, match=rf"^{key}: .*(kernel|log-SNR)"):
            _sample(run, tmp_path / sampler, sampler, "n_samples=4")
    summary = _sample(run, tmp_path / "em", "euler_maruyama", "n_samples=4", "sampler.grid.n_steps=3")
    assert summary["nfe_per_batch"] == [3]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sampler=nope"], "unknown sampler 'nope'; choose one of: ancestral"),
        (["sde=ve"], "sde is fixed by the training run"),
        (["data.path=x.npz"], "data.path is fixed by the training run"),
    ],
)
def test_entry_point_refuses_unknown_samplers_and_fixed_groups(monkeypatch, capsys, argv, message):
    monkeypatch.setattr(sys, "argv", ["sde-sample", "run_dir=x", *argv])
    with pytest.raises(SystemExit) as exit_info:
        app.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith(f"sde-sample: error: {message}") and err.count("\n") == 1


# ---------------------------------------------------------------------- console, outside the repo
@pytest.mark.slow
def test_a_sweep_over_two_samplers_from_another_directory(run_dir, tmp_path):
    args = ["-m", f"run_dir={os.path.relpath(run_dir, tmp_path)}", "sampler=dpm_solver,heun", "n_samples=64",
            "batch_size=32", "sampler.grid.n_steps=4", "progress=false"]  # fmt: skip
    proc = subprocess.run([*SAMPLE, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("sde-sample:") and " samples by " in line]
    assert len(lines) == 2
    for line, name, nfe in zip(lines, ["dpm_solver", "heun"], [4, 7]):  # Heun: 2 N - 1
        pattern = rf"64 samples by {name} .*: {nfe} NFE per sample \({2 * nfe} batched evaluations\), \d+\.\d\d s"
        assert re.search(pattern, line)
        (out,) = tmp_path.glob(f"multirun/sample/*/*/*-{name}")
        assert np.load(out / "samples.npz")["samples"].shape == (64, 2)
        assert (out / "samples.png").stat().st_size > 1000


@pytest.mark.slow
def test_errors_exit_non_zero_with_one_line(run_dir, tmp_path):
    (tmp_path / "no_ckpt").mkdir()
    shutil.copytree(run_dir / ".hydra", tmp_path / "no_ckpt" / ".hydra")
    proc = subprocess.run([*SAMPLE, "run_dir=no_ckpt"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("sde-sample: error: no checkpoint at ") and proc.stderr.count("\n") == 1


# ------------------------------------------ a class-conditional image run: guidance, inpainting, SDEdit
DIGITS = ["experiment=digits", "train.steps=4", "train.batch_size=16", "train.lr=1e-2", "train.warmup_steps=1",
          "train.checkpoint_every=4", "train.log_every=2", "train.progress=false", "model.net.channels=8",
          "model.net.channel_mult=[1,2]", "model.net.attention_resolutions=[]", "n_samples=20",
          "sampler.grid.n_steps=3", "eval_points=0", "guidance=1.5"]  # fmt: skip


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """``sde-train experiment=digits`` shrunk to 4 steps of a tiny class-conditional U-Net (a subprocess,
    one thread like this process, so both compute bit for bit alike)."""
    out = tmp_path_factory.mktemp("digits")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sde_diffusion.cli.train", *DIGITS, f"hydra.run.dir={out}"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300, env=env)
    return out


def _by_hand(run, fn, n, batch_size, seed=0):
    """The edit tasks' recipe written out: held-out point ``i mod N_test`` for sample ``i``, and each
    sample its own noise stream, as draw_samples gives it."""
    trained = sd.load_run(run, "cpu")
    inputs = trained.data.test[torch.arange(n) % trained.data.test.shape[0]]
    noise = [S.PerSampleNoise(draw.stream_seed(seed, draw.NOISE, 0), idx) for idx in torch.arange(n).split(batch_size)]
    out = [fn(trained, x, gen) for x, gen in zip(inputs.split(batch_size), noise, strict=True)]
    return inputs, torch.cat([o.samples for o in out])


@pytest.mark.slow
def test_sde_train_draws_a_guided_grid_of_classes(digits_run):
    trained = sd.load_run(digits_run, "cpu")
    assert trained.score_model.n_classes == 10
    fn, grid = build_sampler(_sample_config(digits_run, "sampler=euler_maruyama", "sampler.grid.n_steps=3"))  # the experiment's
    labels = _grid_labels(20, 10)  # 4 rows of 5 columns: classes 0, 1, 2, 3
    sample = partial(draw.draw_samples, trained.sde, sampler=fn, grid=grid, data_shape=(1, 8, 8), n=20, batch_size=20, seed=0)
    guided = sample(score_fn=S.GuidedScore(trained.score_model, labels, 1.5)).samples
    saved = torch.from_numpy(np.load(digits_run / "samples.npz")["samples_unclipped"])
    torch.testing.assert_close(saved, guided, rtol=0, atol=0)
    # neither unguided nor other labels give these samples
    assert not torch.allclose(saved, sample(score_fn=S.GuidedScore(trained.score_model, labels, 0.0)).samples)
    assert not torch.allclose(saved, sample(score_fn=S.GuidedScore(trained.score_model, labels.flip(0), 1.5)).samples)
    picture = matplotlib.image.imread(digits_run / "samples.png")
    assert picture.ndim == 3 and min(picture.shape[:2]) > 100


@pytest.mark.slow
def test_class_label_and_guidance_give_the_guided_samples(digits_run, tmp_path):
    summary = _sample(digits_run, tmp_path, "dpm_solver", "class_label=7", "guidance=2", "n_samples=8", "sampler.grid.n_steps=4")
    trained = sd.load_run(digits_run, "cpu")
    fn, grid = build_sampler(_sample_config(digits_run, "sampler=dpm_solver", "sampler.grid.n_steps=4"))
    expected = draw.draw_samples(trained.sde, S.GuidedScore(trained.score_model, 7, 2.0), fn, grid, (1, 8, 8), 8, batch_size=1000, seed=0)
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "samples.npz")["samples_unclipped"]), expected.samples, rtol=0, atol=0)
    assert summary["class_label"] == 7 and summary["guidance"] == 2.0 and summary["task"] == "sample"


@pytest.mark.slow
def test_inpainting_held_out_digits_keeps_their_known_pixels(digits_run, tmp_path, capsys):
    summary = _sample(digits_run, tmp_path, "reverse_diffusion", "task=inpaint", "mask=center", "n_samples=12", "batch_size=5",
                      "sampler.grid.n_steps=4")  # fmt: skip
    saved = np.load(tmp_path / "samples.npz")
    mask = S.inpainting_mask("center", (1, 8, 8))
    fn, grid = build_sampler(_sample_config(digits_run, "sampler=reverse_diffusion", "sampler.grid.n_steps=4"))

    def inpaint(trained, x, generator):
        ts = grid(trained.sde, dtype=torch.float32)
        return S.inpaint(trained.sde, trained.score_model, x, mask, ts, generator=generator, sampler=fn)

    inputs, expected = _by_hand(digits_run, inpaint, 12, 5)
    samples = torch.from_numpy(saved["samples_unclipped"])
    torch.testing.assert_close(samples, expected, rtol=0, atol=0)
    assert torch.equal(samples[:, mask], inputs[:, mask]) and not torch.isclose(samples[:, ~mask], inputs[:, ~mask]).all()
    assert np.array_equal(saved["inputs"], inputs.numpy()) and np.array_equal(saved["mask"], mask.numpy())
    assert summary["task"] == "inpaint" and summary["mask"] == "center" and summary["nfe_per_batch"] == [5, 5, 5]
    assert (tmp_path / "inputs.png").stat().st_size > 1000 and (tmp_path / "samples.png").stat().st_size > 1000
    assert "12 samples by reverse_diffusion, inpainting center from step 4" in capsys.readouterr().out


@pytest.mark.slow
def test_sdedit_of_held_out_digits_towards_a_class(digits_run, tmp_path):
    summary = _sample(digits_run, tmp_path, "ddim", "task=sdedit", "t0=0.5", "class_label=3", "guidance=1", "n_samples=6",
                      "sampler.grid.n_steps=10")  # fmt: skip
    fn, grid = build_sampler(_sample_config(digits_run, "sampler=ddim", "sampler.grid.n_steps=10"))

    def sdedit(trained, x, generator):
        ts = grid(trained.sde, dtype=torch.float32)
        return S.sdedit(trained.sde, S.GuidedScore(trained.score_model, 3, 1.0), x, 0.5, ts, sampler=fn, generator=generator)

    _, expected = _by_hand(digits_run, sdedit, 6, 1000)
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "samples.npz")["samples_unclipped"]), expected, rtol=0, atol=0)
    ts = grid(sd.VPSDE())
    assert summary["t0"] == 0.5 and summary["nfe_per_batch"] == [int((ts < 0.5).sum())]


@pytest.mark.slow
@pytest.mark.parametrize(
    "sampler, overrides, message",
    [
        ("ode", ["task=inpaint"], "task=inpaint needs a fixed-grid sampler"),
        ("ode", ["sampler.thresholding=static"], "sampler.thresholding need a fixed-grid sampler"),
        ("ddim", ["sampler.thresholding=dynamic", "sampler.threshold_percentile=0"], "percentile"),
        ("ddim", ["sampler.thresholding=clip"], "thresholding must be one of none, static, dynamic"),
        ("pc", ["task=inpaint", "mask=diagonal"], "mask must name the region to regenerate, one of left, right"),
        ("pc", ["task=paint"], "task must be one of sample, inpaint, sdedit"),
        ("ddim", ["class_label=10"], "class_label must be an integer in 0..9 or null"),
        ("ddim", ["guidance=1"], "guidance=1.0 steers the samples towards a class: set class_label"),
        ("ddim", ["class_label=2", "guidance=-1"], "guidance: guidance weight w must be a number >= 0"),
        ("ddim", ["task=sdedit", "t0=2"], "sampler=ddim: t0 must lie in [0, 1], got 2.0 (from t = 0 up to the grid's start ts[0]"),
    ],
)
def test_bad_task_options_are_refused(digits_run, tmp_path, sampler, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _sample(digits_run, tmp_path, sampler, "n_samples=2", *overrides)


@pytest.mark.slow
def test_class_labels_need_a_conditional_run_and_rows_need_images(run_dir, tmp_path):
    with pytest.raises(ConfigError, match="class_label=0 needs a class-conditional run"):
        _sample(run_dir, tmp_path, "ddim", "class_label=0")
    with pytest.raises(ConfigError, match="mask=top needs images"):
        _sample(run_dir, tmp_path, "pc", "task=inpaint", "mask=top")
    summary = _sample(run_dir, tmp_path, "pc", "task=inpaint", "mask=left", "n_samples=4", "sampler.grid.n_steps=3")
    saved = np.load(tmp_path / "samples.npz")
    assert summary["mask"] == "left" and np.array_equal(saved["samples"][:, 1], saved["inputs"][:, 1])


# ------------------------------------------------------------------ range, weights, class reference
@pytest.mark.slow
def test_guided_samples_are_compared_with_the_held_out_data_of_their_class(digits_run, tmp_path):
    summary = _sample(digits_run, tmp_path, "dpm_solver", "class_label=7", "n_samples=8", "sampler.grid.n_steps=4")
    trained = sd.load_run(digits_run, "cpu")
    sevens = trained.data.test[trained.data.test_labels == 7]
    samples = torch.from_numpy(np.load(tmp_path / "samples.npz")["samples_unclipped"])
    assert summary["sliced_w2_reference"] == "held-out data of class 7"
    assert summary["sliced_w2_vs_held_out"] == pytest.approx(sliced_w2_to_held_out(samples, sevens))
    unguided = _sample(digits_run, tmp_path / "all", "dpm_solver", "n_samples=8", "sampler.grid.n_steps=4")
    assert unguided["sliced_w2_reference"] == "all held-out data"


@pytest.mark.slow
def test_the_summary_states_the_range_and_a_stray_sample_set_is_warned(run_dir, tmp_path, capsys):
    """The module's 30-step run: its samples leave the checkerboard's range; sde-sample records the
    fraction and the ratio, and warns in one line."""
    summary = _sample(run_dir, tmp_path, "euler_maruyama", "n_samples=50")
    samples = torch.from_numpy(np.load(tmp_path / "samples.npz")["samples"])
    expected = sd.sample_range(samples, sd.load_run(run_dir, "cpu").data.test)
    assert summary["samples_outside_range"] == pytest.approx(expected.fraction_outside)
    assert summary["sample_range"]["material"] == expected.material
    out = capsys.readouterr().out
    assert ("WARNING: the samples leave the data's range" in out) == expected.material
    assert f"{100 * expected.fraction_outside:.1f}% of values outside the data's range" in out


@pytest.mark.slow
def test_weights_raw_samples_the_last_steps_weights(run_dir, tmp_path):
    ema = _sample(run_dir, tmp_path / "ema", "ddim", "n_samples=20")
    raw = _sample(run_dir, tmp_path / "raw", "ddim", "n_samples=20", "weights=raw")
    assert ema["weights"] == "ema" and raw["weights"] == "raw"
    state = torch.load(Path(run_dir) / "checkpoints" / "last.pt", weights_only=True)
    model = sd.load_run(run_dir, "cpu", weights="raw").score_model
    torch.testing.assert_close(model.state_dict(), {k: v for k, v in state["model"].items()}, rtol=0, atol=0)
    a, b = (np.load(tmp_path / d / "samples.npz")["samples"] for d in ("ema", "raw"))
    assert not np.allclose(a, b)
    with pytest.raises(ConfigError, match="weights must be one of ema, raw"):
        _sample(run_dir, tmp_path / "bad", "ddim", "n_samples=2", "weights=last")
