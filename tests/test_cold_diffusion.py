"""Cold diffusion (Bansal et al. 2022): every degradation is exact at t = 0 and linear, blur agrees with
an independent reflect-border Gaussian filter, a perfect restorer returns x_0 under both samplers,
and with a fixed restorer error Alg. 2 ends exactly at x_0 + e - D(e, 1) (the first-order
cancellation), smaller than Alg. 1's x_0 + e whenever the full degradation keeps most of e."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.degradations import DEGRADATIONS, GaussianBlur, Mask, Pixelate

F64 = torch.float64
ALL = [GaussianBlur(3.0), GaussianBlur(0.7), Mask(), Mask("random", softness=3.0), Pixelate()]


def _images(n=6, shape=(2, 8, 8), seed=0):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=F64) * 2 - 1


@pytest.mark.parametrize("degradation", ALL, ids=repr)
def test_every_degradation_is_exact_at_zero_and_linear(degradation):
    x, y = _images(), _images(seed=1)
    torch.testing.assert_close(degradation(x, 0.0), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(degradation(x.float(), 0.0), x.float(), rtol=0, atol=2e-6)
    t = torch.linspace(0, 1, x.shape[0], dtype=F64)
    torch.testing.assert_close(degradation(2 * x - 3 * y, t), 2 * degradation(x, t) - 3 * degradation(y, t), rtol=0, atol=1e-12)
    # one level per image: the batch call equals the images one by one
    one_by_one = torch.cat([degradation(x[i : i + 1], t[i : i + 1]) for i in range(x.shape[0])])
    torch.testing.assert_close(degradation(x, t), one_by_one, rtol=0, atol=1e-12)


def test_the_fully_degraded_images():
    x = _images()
    assert torch.equal(Mask()(x, 1.0), torch.zeros_like(x)) and torch.equal(Mask("random")(x, 1.0), torch.zeros_like(x))
    torch.testing.assert_close(Pixelate()(x, 1.0), x.mean(dim=(-2, -1), keepdim=True).expand_as(x), rtol=0, atol=1e-12)
    blurred = GaussianBlur(50.0)(x, 1.0)  # a very wide blur leaves the mean colour; every width keeps the mean
    torch.testing.assert_close(blurred, x.mean(dim=(-2, -1), keepdim=True).expand_as(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(GaussianBlur(2.0)(x, 0.5).mean(dim=(-2, -1)), x.mean(dim=(-2, -1)), rtol=0, atol=1e-12)


def test_blur_is_a_reflect_border_gaussian_filter():
    """Against scipy.ndimage.gaussian_filter with mode='reflect' (half-sample symmetric, as the mirrored
    FFT): the sampled kernel and the continuous one differ by ~1e-3 at sigma >= 1."""
    ndimage = pytest.importorskip("scipy.ndimage")
    x = _images(2, (1, 16, 16))
    for sigma in (1.0, 2.5):
        ours = GaussianBlur(sigma)(x, 1.0)
        ref = torch.from_numpy(np.stack([ndimage.gaussian_filter(img[0].numpy(), sigma, mode="reflect", truncate=8.0) for img in x]))[:, None]
        assert (ours - ref).abs().max() < 3e-3


def test_mask_and_pixelate_move_monotonically_and_continuously():
    x = _images(1, (1, 8, 8)).abs() + 0.1  # positive pixels: masking can only lower the sum
    ts = torch.linspace(0, 1, 101, dtype=F64)
    mass = torch.stack([Mask()(x, t).sum() for t in ts])
    assert (mass[1:] <= mass[:-1] + 1e-12).all() and mass[0] > 0 and mass[-1] == 0
    steps = torch.stack([(Pixelate()(x, a) - Pixelate()(x, b)).abs().max() for a, b in zip(ts[:-1], ts[1:], strict=True)])
    assert steps.max() < 0.2  # no jump between neighbouring levels


@pytest.mark.parametrize("degradation", ALL, ids=repr)
@pytest.mark.parametrize("algorithm", ["naive", "improved"])
def test_a_perfect_restorer_returns_the_data(degradation, algorithm):
    x0 = _images()
    out = sd.cold_sample(lambda x, t: x0, degradation, degradation(x0, 1.0), 10, algorithm=algorithm)
    torch.testing.assert_close(out.samples, x0, rtol=0, atol=1e-12)
    assert out.nfe == 10


@pytest.mark.parametrize("degradation", ALL, ids=repr)
def test_alg2_cancels_a_fixed_restorer_error_to_first_order(degradation):
    """R(x_t, t) = x_0 + e: Alg. 1 ends at x_0 + e; Alg. 2 telescopes to x_0 + e - D(e, 1). For blur
    and pixelation (which keep most of a smooth e) that error is far smaller; a full mask removes
    e entirely, D(e, 1) = 0, and the two agree (the cancellation needs D to keep the error)."""
    x0 = _images()
    ramp = torch.linspace(-1, 1, 8, dtype=F64)
    e = 0.1 + 0.05 * ramp[None, None, None, :] + 0.03 * ramp[None, None, :, None] ** 2
    e = e.expand_as(x0)
    restore = lambda x, t: x0 + e  # noqa: E731
    naive = sd.cold_sample(restore, degradation, degradation(x0, 1.0), 10, algorithm="naive").samples
    improved = sd.cold_sample(restore, degradation, degradation(x0, 1.0), 10, algorithm="improved").samples
    torch.testing.assert_close(naive - x0, e, rtol=0, atol=1e-12)
    torch.testing.assert_close(improved - x0, e - degradation(e, 1.0), rtol=0, atol=1e-12)
    if isinstance(degradation, Mask):
        torch.testing.assert_close(improved, naive, rtol=0, atol=1e-12)
    else:
        assert (improved - x0).norm() < 0.3 * (naive - x0).norm()


def test_restoration_loss_is_the_error_of_the_restored_degraded_data():
    x0 = _images()
    blur = GaussianBlur(2.0)
    restore = lambda x, t: 0.5 * x  # noqa: E731
    for norm in ("l1", "l2"):
        loss = sd.restoration_loss(restore, blur, x0, norm=norm, generator=torch.Generator().manual_seed(3))
        t = 1.0 - torch.rand(x0.shape[0], generator=torch.Generator().manual_seed(3), dtype=F64)
        residual = (0.5 * blur(x0, t) - x0).reshape(x0.shape[0], -1)
        expected = residual.abs().sum(1) if norm == "l1" else residual.pow(2).sum(1)
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    assert torch.equal(sd.restoration_loss(lambda x, t: x0, blur, x0), torch.zeros(x0.shape[0], dtype=F64))


def test_bad_inputs_are_named():
    x = _images()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Pixelate()(x, 1.5)
    with pytest.raises(ValueError, match="images"):
        GaussianBlur()(torch.zeros(3, 64), 0.5)
    with pytest.raises(ValueError, match="algorithm"):
        sd.cold_sample(lambda x, t: x, Mask(), x, 5, algorithm="fast")
    with pytest.raises(ValueError, match="divisible"):
        Pixelate()(torch.zeros(1, 1, 12, 12), 0.5)
    assert set(DEGRADATIONS) == {"blur", "mask", "pixelate"}


@pytest.mark.parametrize("degradation", ["mask", pytest.param("pixelate", marks=pytest.mark.slow)])
def test_experiment_digits_cold_runs_end_to_end(tmp_path, degradation):
    """sde-train experiment=digits_cold degradation=...: trains the restorer, restores held-out digits
    with both algorithms and generates with both; the summary holds the numbers the images show."""
    import json
    import os
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    args = [
        "experiment=digits_cold", f"degradation={degradation}", "train.steps=6", "train.progress=false", "model.net.channels=8",
        "model.net.channel_mult=[1,2]", "model.net.attention_resolutions=[]", "n_samples=8", "cold.steps=3", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "sde_diffusion.cli.train", *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["task"] == "cold" and summary["degradation"].startswith({"mask": "Mask", "pixelate": "Pixelate"}[degradation])
    assert set(summary["restoration"]) == {"naive", "improved"} and set(summary["restoration"]["naive"]) == {"0.25", "0.5", "1.0"}
    assert all((run_dir / f"samples_{a}.png").is_file() for a in ("naive", "improved"))
    restorer = sd.load_run(run_dir, "cpu").score_model
    assert restorer.is_restorer


@pytest.mark.slow
def test_sampling_or_evaluating_a_restorer_as_a_score_is_refused(tmp_path):
    import os
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["experiment=digits_cold", "train.steps=2", "train.progress=false", "model.net.channels=8", "model.net.channel_mult=[1,2]",
            "model.net.attention_resolutions=[]", "n_samples=4", "cold.steps=2", f"hydra.run.dir={run_dir}"]  # fmt: skip
    assert subprocess.run([sys.executable, "-m", "sde_diffusion.cli.train", *args], capture_output=True, env=env, cwd=tmp_path).returncode == 0
    for module in ("sample", "eval"):
        proc = subprocess.run(
            [sys.executable, "-m", f"sde_diffusion.cli.{module}", f"run_dir={run_dir}", f"hydra.run.dir={tmp_path / module}"],
            capture_output=True, text=True, env=env, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode != 0 and "cold diffusion restorer, not a score model" in proc.stderr
