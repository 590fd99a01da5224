"""Super-resolution and cascades (SR3, Saharia et al. 2021; Ho et al. 2022): the downsampling operator
is the block-average matrix A; with the exact conditional score of Gaussian data, super_resolve draws
the closed-form Gaussian posterior of x_0 given c = A x_0 (+ a n), for noise-free and augmented
conditioning, while the unconditional score does not; noise-conditioning augmentation at level 0 is
exactly no augmentation, in training too; the U-Net sees the conditioning image and level; PSNR/SSIM
against loop-based formulas; exact resume; the apps (digits_sr, digits_cascade) end to end."""

from __future__ import annotations

import copy
import json
import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from apps import run_app
from scipy import stats

import sde_diffusion as sd
from sde_diffusion._seeding import derive_seed
from sde_diffusion.conditioning import ConditionedScore, Conditioning, SuperResolution, bicubic_upsample, downsample
from sde_diffusion.app.config import build_sampler
from sde_diffusion.data.dataset import Dataset
from sde_diffusion.image_metrics import psnr, ssim, super_resolution_scores
from sde_diffusion.models import UNet
from sde_diffusion.samplers import dpm_solver_pp, euler_maruyama, probability_flow_sampler, super_resolve
from sde_diffusion.timesteps import log_snr_time_grid, uniform_time_grid
from sde_diffusion.training import evaluate_loss

F64 = torch.float64
P_FAIL = 1e-4  # the false-alarm probability of each statistical check


def _block_matrix(h: int, w: int) -> torch.Tensor:
    """The matrix of ``downsample(., 2)`` on 1 x h x w images, built column by column from the
    identity basis: ``(h w / 4, h w)``."""
    d = h * w
    return downsample(torch.eye(d, dtype=F64).reshape(d, 1, h, w), 2).reshape(d, -1).T


# ------------------------------------------------------------------------------ the operator
def test_downsample_is_the_block_average_matrix():
    A = _block_matrix(4, 4)
    assert A.shape == (4, 16)
    for r in range(4):  # low-res pixel r = (bi, bj) averages the 2x2 block at rows 2bi.., cols 2bj..
        bi, bj = divmod(r, 2)
        block = sorted((2 * bi + di) * 4 + 2 * bj + dj for di in (0, 1) for dj in (0, 1))
        assert A[r].nonzero().flatten().tolist() == block
        assert torch.equal(A[r, block], torch.full((4,), 0.25, dtype=F64))
    x = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(downsample(x, 2), (A @ x.flatten(1).T).T.reshape(5, 1, 2, 2), rtol=0, atol=1e-15)
    # other factors and channels: the mean of each factor x factor block, channel by channel
    y = torch.randn(2, 3, 6, 9, generator=torch.Generator().manual_seed(1), dtype=F64)
    torch.testing.assert_close(downsample(y, 3), y.reshape(2, 3, 2, 3, 3, 3).mean((3, 5)), rtol=0, atol=1e-14)
    assert torch.equal(downsample(y, 1), y)
    # bicubic upsampling (the baseline) keeps constants and is PyTorch's bicubic
    const = torch.full((2, 1, 4, 4), 0.3, dtype=F64)
    torch.testing.assert_close(bicubic_upsample(const, (8, 8)), torch.full((2, 1, 8, 8), 0.3, dtype=F64), rtol=0, atol=1e-14)
    torch.testing.assert_close(bicubic_upsample(x, (8, 8)), F.interpolate(x, size=(8, 8), mode="bicubic", align_corners=False))


def test_downsample_refuses_what_it_cannot_pool():
    for shape in [(1, 1, 5, 4), (1, 1, 4, 5), (2, 3, 7, 7)]:
        with pytest.raises(ValueError, match="divisible by 2"):
            downsample(torch.zeros(shape), 2)
    for bad in (torch.zeros(4, 4), torch.zeros(1, 4, 4), torch.zeros(1, 1, 1, 4, 4)):
        with pytest.raises(ValueError, match=r"images \(B, C, H, W\)"):
            downsample(bad, 2)
    with pytest.raises(ValueError, match="factor"):
        downsample(torch.zeros(1, 1, 4, 4), 0)
    with pytest.raises(ValueError, match="sample_level"):
        SuperResolution(2, max_level=0.1, sample_level=0.2)  # sampling beyond training's levels
    with pytest.raises(ValueError, match="max_level"):
        SuperResolution(2, max_level=-0.1)
    assert SuperResolution(2).output_shape((3, 4, 5)) == (3, 8, 10)


# ------------------------------------------------------- the exact posterior of Gaussian data
D = 16  # 1 x 4 x 4 images
A16 = _block_matrix(4, 4)  # (4, 16)


def _gaussian_data():
    g = torch.Generator().manual_seed(0)
    mu = 0.5 * torch.randn(D, generator=g, dtype=F64)
    b = torch.randn(D, D, generator=g, dtype=F64) / 4
    return mu, 0.3 * (b @ b.T) + 0.05 * torch.eye(D, dtype=F64)  # eigenvalues 0.05 .. 1


MU, SIGMA = _gaussian_data()
C_OBS = A16 @ MU + torch.tensor([1.0, -0.8, 0.6, 0.9], dtype=F64)  # a low-res image ~2 sd from the prior's


def _posterior(c: torch.Tensor, level: float):
    """x_0 | c~ for c~ = A x_0 + level n: mean (rows of c), covariance, and the gain K."""
    K = SIGMA @ A16.T @ torch.linalg.inv(A16 @ SIGMA @ A16.T + level**2 * torch.eye(4, dtype=F64))
    return MU + (c - A16 @ MU) @ K.T, SIGMA - K @ A16 @ SIGMA, K


class ExactConditionalScore(torch.nn.Module):
    """The exact score of x_t given the conditioning image and its level (cond.image, cond.level, as
    the library passes them): x_t | c~ ~ N(m mu_post, m^2 Sigma_post + s^2 I). ``mode="unconditional"``
    ignores cond (the score of the data's marginal), ``mode="level_0"`` ignores the level (treats
    every conditioning image as clean): both are controls that must fail the checks."""

    def __init__(self, sde, mode: str = "exact"):
        super().__init__()
        self.sde, self.mode = sde, mode
        self.images: list[torch.Tensor] = []

    def forward(self, x, t, y=None, cond=None):
        assert y is None and bool((t == t[0]).all())
        m, s = (float(v) for v in self.sde.kernel(t[:1]))
        xf = x.flatten(1)
        eye = torch.eye(D, dtype=F64)
        if self.mode == "unconditional":
            return (-(xf - m * MU) @ torch.linalg.inv(m**2 * SIGMA + s**2 * eye)).reshape(x.shape)
        assert isinstance(cond, Conditioning) and cond.level.shape == (x.shape[0],)
        self.images.append(cond.image.clone())
        c = cond.image.flatten(1)
        level = cond.level if self.mode == "exact" else torch.zeros_like(cond.level)
        out = torch.empty_like(xf)
        for value in level.unique():
            rows = level == value
            mean, cov, _ = _posterior(c[rows], float(value))
            out[rows] = -(xf[rows] - m * mean) @ torch.linalg.inv(m**2 * cov + s**2 * eye)
        return out.reshape(x.shape)


def _gaussian_checks(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple[float, float, float, float]:
    """In the range of ``cov`` (dimension d, whitened): Hotelling's n |z_bar|^2 ~ chi2_d for the mean,
    and n |W - I|_F^2 / 2 ~ chi2_{d(d+1)/2} (approximately) for the sample covariance W; returns both
    statistics and their 1 - P_FAIL quantiles."""
    ev, U = torch.linalg.eigh(cov)
    keep = ev > 1e-8 * ev.max()
    d, n = int(keep.sum()), x.shape[0]
    z = (x - mean) @ U[:, keep] / ev[keep].sqrt()
    t2 = n * float(z.mean(0).pow(2).sum())
    f = n * float((torch.cov(z.T) - torch.eye(d, dtype=F64)).pow(2).sum()) / 2
    return t2, float(stats.chi2.ppf(1 - P_FAIL, d)), f, float(stats.chi2.ppf(1 - P_FAIL, d * (d + 1) // 2))


SAMPLERS = {
    "euler_maruyama": (euler_maruyama, partial(uniform_time_grid, n_steps=200)),
    "dpm_solver": (partial(dpm_solver_pp, order=2), partial(log_snr_time_grid, n_steps=20)),
    "ode": (partial(probability_flow_sampler, rtol=1e-6, atol=1e-6), partial(uniform_time_grid, n_steps=1)),
}
N_GAUSS = 4000


def _draw_posterior(sampler_name: str, level: float, mode: str = "exact"):
    sde = sd.VPSDE()
    net = ExactConditionalScore(sde, mode)
    sampler, grid = SAMPLERS[sampler_name]
    low = C_OBS.reshape(1, 1, 2, 2).expand(N_GAUSS, 1, 2, 2)
    sr = SuperResolution(2, max_level=0.5, sample_level=level)
    out = super_resolve(sde, sd.ScoreParameterization(net, sde), sampler, grid, sr, low, batch_size=N_GAUSS, seed=0, dtype=F64)
    assert out.samples.shape == (N_GAUSS, 1, 4, 4) and out.samples.dtype == F64
    return out.samples.flatten(1), net


@pytest.mark.parametrize("sampler_name", list(SAMPLERS))
def test_exact_conditional_score_draws_the_posterior_given_a_clean_low_res_image(sampler_name):
    """sample_level = 0: x_0 | A x_0 = c is N(mu_post, Sigma_post), degenerate along the observed
    directions (A Sigma_post = 0): the samples match it in the other 12 and reproduce c."""
    x, net = _draw_posterior(sampler_name, 0.0)
    mean, cov, _ = _posterior(C_OBS[None], 0.0)
    torch.testing.assert_close(A16 @ cov, torch.zeros(4, D, dtype=F64), rtol=0, atol=1e-12)  # the oracle's degeneracy
    t2, t2_max, f, f_max = _gaussian_checks(x, mean[0], cov)
    assert t2 < t2_max, (t2, t2_max)
    assert f < f_max, (f, f_max)
    consistency = (x @ A16.T - C_OBS).pow(2).mean().sqrt()
    assert consistency < 0.02, consistency  # residual noise at t = eps, s(eps) = 0.01
    # the network saw exactly the given low-res image at level 0, at every step
    assert all(torch.equal(img, C_OBS.reshape(1, 1, 2, 2).expand_as(img)) for img in net.images)


@pytest.mark.parametrize("sampler_name", list(SAMPLERS))
def test_exact_conditional_score_with_augmentation_draws_the_mixture(sampler_name):
    """sample_level = a > 0: sample i is conditioned on its own c~_i = c + a n_i at level a, so the
    samples follow N(mu_post(c), Sigma_post(a) + a^2 K K^T); the same c~_i at every step."""
    a = 0.3
    x, net = _draw_posterior(sampler_name, a)
    mean, cov, K = _posterior(C_OBS[None], a)
    t2, t2_max, f, f_max = _gaussian_checks(x, mean[0], cov + a**2 * K @ K.T)
    assert t2 < t2_max, (t2, t2_max)
    assert f < f_max, (f, f_max)
    first = net.images[0]
    assert all(torch.equal(img, first) for img in net.images)  # drawn once per sample, not per step
    noise = (first.flatten(1) - C_OBS) / a  # (N, 4) standard normal, independent across samples
    t2n = N_GAUSS * float(noise.mean(0).pow(2).sum())
    assert t2n < stats.chi2.ppf(1 - P_FAIL, 4)
    assert abs(float(noise.pow(2).mean()) - 1) < 5 * math.sqrt(2 / noise.numel())


@pytest.mark.parametrize(("level", "mode"), [(0.0, "unconditional"), (0.3, "unconditional"), (0.3, "level_0")])
def test_the_posterior_checks_reject_a_score_that_ignores_the_conditioning(level, mode):
    """Controls: the data's own score (ignoring cond), or a conditional score told level 0 for an
    augmented image, fail the same checks by orders of magnitude."""
    x, _ = _draw_posterior("dpm_solver", level, mode)
    mean, cov, K = _posterior(C_OBS[None], level)
    t2, t2_max, f, f_max = _gaussian_checks(x, mean[0], cov + level**2 * K @ K.T)
    assert t2 > 100 * t2_max and f > 5 * f_max, (t2, f)
    if mode == "unconditional":
        assert (x @ A16.T - C_OBS).pow(2).mean().sqrt() > 0.3


# ------------------------------------------------------------ noise-conditioning augmentation
def test_level_zero_is_exactly_no_augmentation():
    x0 = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(5)
    before = gen.get_state()
    cond = SuperResolution(2, max_level=0.0).training(x0, gen)
    assert isinstance(cond, Conditioning)
    assert torch.equal(cond.image, downsample(x0, 2)) and torch.equal(cond.level, torch.zeros(6))
    assert cond.level.dtype == x0.dtype
    assert torch.equal(gen.get_state(), before)  # nothing drawn
    low = downsample(x0, 2)
    for max_level in (0.0, 0.5):
        out = SuperResolution(2, max_level=max_level, sample_level=0.0).sampling(low, gen)
        assert out.image is low or torch.equal(out.image, low)
        assert torch.equal(out.level, torch.zeros(6))
    assert torch.equal(gen.get_state(), before)


def test_augmentation_levels_are_uniform_and_the_noise_has_each_samples_level():
    max_level, n = 0.4, 400
    x0 = torch.randn(n, 1, 32, 32, generator=torch.Generator().manual_seed(0), dtype=F64)
    gen = torch.Generator().manual_seed(1)
    before = gen.get_state()
    cond = SuperResolution(2, max_level=max_level).training(x0, gen)
    assert not torch.equal(gen.get_state(), before)
    level = cond.level
    assert level.shape == (n,) and bool((level >= 0).all() and (level <= max_level).all())
    assert float(level.std()) > 0.05  # not one level for all
    assert stats.kstest(level.numpy() / max_level, "uniform").pvalue > P_FAIL
    # (image - A x0) / level_i is standard normal, pixel by pixel and sample by sample
    r = ((cond.image - downsample(x0, 2)) / level[:, None, None, None]).flatten(1)  # (n, 256)
    k = r.shape[1]
    per_sample = r.pow(2).sum(1)  # chi2_k each if the noise of sample i has std level_i
    lo, hi = stats.chi2.ppf(P_FAIL / (2 * n), k), stats.chi2.ppf(1 - P_FAIL / (2 * n), k)
    assert bool((per_sample > lo).all() and (per_sample < hi).all()), (per_sample.min(), per_sample.max())
    assert abs(float(r.mean())) < 5 / math.sqrt(r.numel())
    # the same generator state gives the same conditioning
    again = SuperResolution(2, max_level=max_level).training(x0, torch.Generator().manual_seed(1))
    assert torch.equal(again.image, cond.image) and torch.equal(again.level, cond.level)
    # sampling: the fixed level, noise of that std
    sampled = SuperResolution(2, max_level=max_level, sample_level=0.1).sampling(downsample(x0, 2), torch.Generator().manual_seed(2))
    assert torch.equal(sampled.level, torch.full((n,), 0.1, dtype=F64))
    noise = (sampled.image - downsample(x0, 2)) / 0.1
    assert abs(float(noise.pow(2).mean()) - 1) < 5 * math.sqrt(2 / noise.numel())


class _CleanLowRes:
    """A conditioner that gives the clean low-res image and draws nothing."""

    def training(self, x0, generator=None):
        return Conditioning(downsample(x0, 2), torch.zeros(x0.shape[0], dtype=x0.dtype))


def _tiny_unet(cond_channels=1, shape=(1, 8, 8), seed=0, randomize_out=True, dtype=torch.float32):
    torch.manual_seed(seed)
    net = UNet(shape, channels=8, channel_mult=[1, 2], n_res_blocks=1, dropout=0.0, cond_channels=cond_channels).to(dtype)
    if randomize_out:  # the output conv and each residual branch's last layer start at zero: give them
        # weights, so that the output depends on the input, and the embeddings reach it
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed + 100)
            for p in net.parameters():
                if p.dim() > 1 and not p.any():
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return net


def _sr_trainer(conditioner, *, steps=3, run_dir=None, resume=False, checkpoint_every=100, shape=(1, 8, 8), seed=0):
    sde = sd.VPSDE()
    model = sd.EpsilonParameterization(_tiny_unet(shape=shape, randomize_out=False), sde)
    data = torch.rand(64, *shape, generator=torch.Generator().manual_seed(3)) * 2 - 1
    options = sd.TrainOptions(
        steps=steps, batch_size=8, lr=1e-2, warmup_steps=2, checkpoint_every=checkpoint_every, log_every=1, progress=False, resume=resume
    )
    return sd.Trainer(model, sde, data, options, run_dir=run_dir, seed=seed, conditioner=conditioner)


def test_a_training_step_at_level_zero_is_the_loss_on_the_clean_low_res_image(tmp_path):
    """The Trainer's first loss equals the one written by hand (its row draw, the micro-batch's
    generator, cond = (A x0, 0)); level 0 trains exactly like a conditioner that draws nothing,
    and a positive level trains differently."""
    trainer = _sr_trainer(SuperResolution(2, 0.0, 0.0))
    model = copy.deepcopy(trainer.model)
    idx = torch.randint(trainer.data.shape[0], (8,), generator=torch.Generator().manual_seed(0))
    x0 = trainer.data[idx]
    cond = Conditioning(downsample(x0, 2), torch.zeros(8))
    gen = torch.Generator().manual_seed(derive_seed(0, 0, 0))
    by_hand = sd.denoising_score_matching(lambda x, t: model(x, t, cond=cond), trainer.sde, x0, generator=gen).mean()
    loss, _ = trainer.train_step()
    assert torch.equal(loss.detach(), by_hand.detach())

    a, b, c = _sr_trainer(SuperResolution(2, 0.0, 0.0)), _sr_trainer(_CleanLowRes()), _sr_trainer(SuperResolution(2, 0.3, 0.0))
    losses = {k: [float(t.train_step()[0]) for _ in range(3)] for k, t in (("a", a), ("b", b), ("c", c))}
    assert losses["a"] == losses["b"] and losses["c"] != losses["a"]
    for name, p in a.model.named_parameters():
        assert torch.equal(p, dict(b.model.named_parameters())[name]), name

    # evaluate_loss: the same conditioning, made chunk by chunk
    data = trainer.data[:16]
    m = trainer.model.eval()
    clean = Conditioning(downsample(data, 2), torch.zeros(16))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(4)
        expected = sd.denoising_score_matching(lambda x, t: m(x, t, cond=clean), trainer.sde, data, generator=gen).mean()
    assert evaluate_loss(m, trainer.sde, data, seed=4, conditioner=SuperResolution(2, 0.0)) == pytest.approx(float(expected), rel=1e-6)
    assert evaluate_loss(m, trainer.sde, data, seed=4, conditioner=SuperResolution(2, 0.3)) != pytest.approx(float(expected), rel=1e-6)


def test_resume_with_a_conditioner_is_exact(tmp_path):
    """6 steps in one go equal 3 steps, a crash, and a resumed run to step 6, bit for bit (the
    augmentation noise is drawn from the micro-batches' own generators)."""
    sr = SuperResolution(2, max_level=0.3, sample_level=0.1)
    full = _sr_trainer(sr, steps=6, run_dir=tmp_path / "full", checkpoint_every=3, shape=(1, 4, 4))
    full.fit()

    class Crash(Exception):
        pass

    def crash(trainer):
        if trainer.step == 4:
            raise Crash

    crashed = _sr_trainer(sr, steps=6, run_dir=tmp_path / "crash", checkpoint_every=3, shape=(1, 4, 4))
    crashed.on_step.append(crash)
    with pytest.raises(Crash):
        crashed.fit()
    resumed = _sr_trainer(sr, steps=6, run_dir=tmp_path / "crash", checkpoint_every=3, shape=(1, 4, 4), resume=True)
    assert resumed.step == 3
    resumed.fit()
    a, b = full.state(), resumed.state()
    assert a["step"] == b["step"] == 6
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    other = _sr_trainer(SuperResolution(2, max_level=0.3, sample_level=0.1), steps=6, shape=(1, 4, 4), seed=1)
    other.fit()
    assert not torch.equal(other.model.state_dict()["net.inp.weight"], a["model"]["net.inp.weight"])


# ------------------------------------------------------------------------------- the network
def test_the_unet_sees_the_conditioning_image_and_level():
    net = _tiny_unet().eval()
    assert net.cond_channels == 1
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=g)
    t = torch.full((4,), 0.4)
    low = torch.randn(4, 1, 4, 4, generator=g)
    level = torch.tensor([0.0, 0.05, 0.1, 0.2])
    with torch.no_grad():
        out = net(x, t, cond=Conditioning(low, level))
        assert out.shape == x.shape and float(out.abs().mean()) > 1e-3
        assert torch.equal(net(x, t, cond=Conditioning(low.clone(), level.clone())), out)
        # another low-res image for sample 1 changes sample 1's output only
        low2 = low.clone()
        low2[1] += 0.5
        out2 = net(x, t, cond=Conditioning(low2, level))
        assert (out2[1] - out[1]).abs().max() > 1e-3
        torch.testing.assert_close(out2[[0, 2, 3]], out[[0, 2, 3]], rtol=1e-6, atol=1e-6)
        # another level changes the output
        out3 = net(x, t, cond=Conditioning(low, level + 0.1))
        assert ((out3 - out).flatten(1).abs().amax(1) > 1e-4).all()
        # the image is resized by nearest neighbour: a 4x4 image and its 8x8 block copy are the same input
        big = low.repeat_interleave(2, -1).repeat_interleave(2, -2)
        torch.testing.assert_close(net(x, t, cond=Conditioning(big, level)), out, rtol=0, atol=0)
        # as the time and class, the output depends on t
        assert not torch.allclose(net(x, t * 0.5, cond=Conditioning(low, level)), out)
    # the untouched network's zero output layer makes it exactly zero (why the tests re-draw it)
    assert torch.equal(_tiny_unet(randomize_out=False)(x, t, cond=Conditioning(low, level)), torch.zeros_like(x))


def test_the_unet_refuses_missing_extra_or_misshapen_conditioning():
    x, t = torch.zeros(2, 1, 8, 8), torch.full((2,), 0.5)
    low, level = torch.zeros(2, 1, 4, 4), torch.zeros(2)
    plain = _tiny_unet(cond_channels=0)
    with pytest.raises(ValueError, match="built without cond_channels.*build it with cond_channels"):
        plain(x, t, cond=Conditioning(low, level))
    conditioned = _tiny_unet()
    with pytest.raises(ValueError, match=r"pass cond=Conditioning\(image, level\)"):
        conditioned(x, t)
    with pytest.raises(ValueError, match=r"pass cond=Conditioning"):
        conditioned(x, t, cond=(low, level))  # a plain tuple is not a Conditioning
    with pytest.raises(ValueError, match=r"conditioning image must be \(2, 1, h, w\)"):
        conditioned(x, t, cond=Conditioning(torch.zeros(2, 2, 4, 4), level))
    with pytest.raises(ValueError, match=r"conditioning image must be \(2, 1, h, w\)"):
        conditioned(x, t, cond=Conditioning(torch.zeros(3, 1, 4, 4), level))
    with pytest.raises(ValueError, match=r"conditioning image must be"):
        conditioned(x, t, cond=Conditioning(torch.zeros(2, 16), level))
    with pytest.raises(ValueError, match=r"level must have shape \(2,\)"):
        conditioned(x, t, cond=Conditioning(low, torch.zeros(3)))
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="cond_channels"):
            UNet((1, 8, 8), channels=8, channel_mult=[1, 2], n_res_blocks=1, cond_channels=bad)


def test_cond_channels_zero_builds_the_unconditioned_network():
    torch.manual_seed(7)
    a = UNet((1, 8, 8), channels=8, channel_mult=[1, 2], n_res_blocks=1, cond_channels=0)
    torch.manual_seed(7)
    b = UNet((1, 8, 8), channels=8, channel_mult=[1, 2], n_res_blocks=1)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.level_embedding is None
    torch.manual_seed(7)
    c = UNet((1, 8, 8), channels=8, channel_mult=[1, 2], n_res_blocks=1, cond_channels=2)
    assert c.inp.weight.shape[1] == 3 and any(k.startswith("level_embedding.") for k in c.state_dict())


class _Recorder(torch.nn.Module):
    def __init__(self, channels=1):
        super().__init__()
        self.channels, self.calls = channels, []

    def forward(self, x, t, y=None, cond=None):
        self.calls.append((y, cond))
        return torch.ones(x.shape[0], x.shape[1] * self.channels, *x.shape[2:], dtype=x.dtype)


@pytest.mark.parametrize(
    "param",
    [sd.ScoreParameterization, sd.EpsilonParameterization, sd.DataParameterization, sd.VPredictionParameterization,
     sd.VelocityParameterization, sd.LearnedVarianceParameterization],
    ids=lambda p: p.__name__,
)  # fmt: skip
def test_every_parameterization_passes_cond_through(param):
    net = _Recorder(2 if param is sd.LearnedVarianceParameterization else 1)
    model = param(net, sd.VPSDE())
    x, t = torch.zeros(3, 1, 4, 4), torch.full((3,), 0.5)
    cond = Conditioning(torch.zeros(3, 1, 2, 2), torch.zeros(3))
    with_cond = model(x, t, cond=cond)
    assert net.calls[-1][1] is cond
    y = torch.tensor([0, 1, 2])
    assert torch.equal(model(x, t, y, cond=cond), with_cond)
    assert net.calls[-1][0] is y and net.calls[-1][1] is cond
    model(x, t)
    assert net.calls[-1] == (None, None)  # no cond given: none passed (networks without cond work)
    bound = ConditionedScore(model, cond)
    assert torch.equal(bound(x, torch.tensor(0.5)), with_cond) and net.calls[-1][1] is cond


def test_conditioned_score_checks_its_batch():
    cond = Conditioning(torch.zeros(3, 1, 2, 2), torch.zeros(3))
    score = ConditionedScore(sd.ScoreParameterization(_Recorder(), sd.VPSDE()), cond)
    with pytest.raises(ValueError, match="conditioning for 3 samples but got a batch of 2"):
        score(torch.zeros(2, 1, 4, 4), torch.tensor(0.5))
    with pytest.raises(TypeError, match="Conditioning"):
        ConditionedScore(score.model, (cond.image, cond.level))


# ------------------------------------------------------------------------------ super_resolve
def test_super_resolve_is_per_sample_reproducible():
    """Each sample's prior, step and augmentation noise are its own: batches of 7 or of 3 give the
    same samples (stochastic sampler, sample_level > 0); another seed gives others."""
    sde = sd.VPSDE()
    model = sd.EpsilonParameterization(_tiny_unet(dtype=F64), sde).eval()
    low = torch.rand(7, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=F64) * 2 - 1
    sr = SuperResolution(2, max_level=0.2, sample_level=0.1)
    grid = partial(uniform_time_grid, n_steps=8)
    with torch.no_grad():
        draw = partial(super_resolve, sde, model, euler_maruyama, grid, sr, low, dtype=F64)
        whole, split = draw(batch_size=7, seed=3), draw(batch_size=3, seed=3)
        other = draw(batch_size=7, seed=4)
        clean = SuperResolution(2, max_level=0.2, sample_level=0.0)
        unaugmented = super_resolve(sde, model, euler_maruyama, grid, clean, low, batch_size=7, seed=3, dtype=F64)
    assert whole.samples.shape == (7, 1, 8, 8) and torch.isfinite(whole.samples).all()
    # the same samples up to round-off of convolutions over batches of another size (float64)
    torch.testing.assert_close(split.samples, whole.samples, rtol=0, atol=1e-9)
    assert (unaugmented.samples - whole.samples).abs().max() > 1e-3  # the augmentation noise reached the network
    assert whole.nfe.tolist() == [8] * 7 and split.batch_nfe == [8, 8, 8]
    assert not torch.allclose(other.samples, whole.samples)
    # the same low-res image in two rows still gets two different samples (own prior and noise)
    assert not torch.allclose(whole.samples[0], whole.samples[1])


# ------------------------------------------------------------------------------------ metrics
def _ssim_by_loops(x: torch.Tensor, ref: torch.Tensor, L: float, w: int) -> torch.Tensor:
    """scikit-image's default SSIM written out: every w x w window that fits, sample (co)variances."""
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    n = w * w
    out = []
    for b in range(x.shape[0]):
        vals = []
        for c in range(x.shape[1]):
            for i in range(x.shape[2] - w + 1):
                for j in range(x.shape[3] - w + 1):
                    p, q = x[b, c, i : i + w, j : j + w].flatten().tolist(), ref[b, c, i : i + w, j : j + w].flatten().tolist()
                    mp, mq = sum(p) / n, sum(q) / n
                    vp = sum((u - mp) ** 2 for u in p) / (n - 1)
                    vq = sum((v - mq) ** 2 for v in q) / (n - 1)
                    cov = sum((u - mp) * (v - mq) for u, v in zip(p, q, strict=True)) / (n - 1)
                    vals.append((2 * mp * mq + c1) * (2 * cov + c2) / ((mp**2 + mq**2 + c1) * (vp + vq + c2)))
        out.append(sum(vals) / len(vals))
    return torch.tensor(out, dtype=F64)


@pytest.mark.parametrize(("shape", "win"), [((2, 1, 8, 8), 7), ((2, 3, 10, 9), 7), ((1, 2, 4, 5), 3), ((1, 1, 6, 6), 5)])
def test_ssim_is_the_windowed_formula(shape, win):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g, dtype=F64) * 2 - 1
    ref = (x + 0.3 * torch.randn(shape, generator=g, dtype=F64)).clamp(-1, 1)
    got = ssim(x, ref, 2.0)
    assert got.shape == (shape[0],)
    torch.testing.assert_close(got, _ssim_by_loops(x, ref, 2.0, win), rtol=0, atol=1e-10)
    torch.testing.assert_close(ssim(x, ref, 2.0, win_size=3), _ssim_by_loops(x, ref, 2.0, 3), rtol=0, atol=1e-10)
    torch.testing.assert_close(ssim(x, x, 2.0), torch.ones(shape[0], dtype=F64), rtol=0, atol=1e-12)
    if win == 7:  # scikit-image itself, where installed
        metrics = pytest.importorskip("skimage.metrics")
        sk = [metrics.structural_similarity(a.numpy(), b.numpy(), data_range=2.0, channel_axis=0) for a, b in zip(x, ref, strict=True)]
        torch.testing.assert_close(got, torch.tensor(sk, dtype=F64), rtol=0, atol=1e-10)


def test_ssim_of_a_constant_offset_is_its_luminance_term():
    """x + delta: variances and covariance unchanged, so SSIM is the mean over windows of
    (2 mu (mu + delta) + C1) / (mu^2 + (mu + delta)^2 + C1) < 1."""
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    delta, c1 = 0.3, (0.01 * 2.0) ** 2
    mu = F.avg_pool2d(x, 7, stride=1)
    expected = ((2 * mu * (mu + delta) + c1) / (mu**2 + (mu + delta) ** 2 + c1)).mean()
    got = ssim(x + delta, x, 2.0)
    torch.testing.assert_close(got, expected.reshape(1), rtol=0, atol=1e-12)
    assert float(got) < 1 and float(ssim(x + 2 * delta, x, 2.0)) < float(got)


def test_psnr_is_ten_log10_of_range_squared_over_mse():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 2, 5, 4, generator=g, dtype=F64)
    ref = torch.rand(3, 2, 5, 4, generator=g, dtype=F64)
    mse = [float(((x[i] - ref[i]) ** 2).sum()) / 40 for i in range(3)]
    torch.testing.assert_close(psnr(x, ref, 1.0), torch.tensor([10 * math.log10(1 / m) for m in mse], dtype=F64), rtol=1e-13, atol=0)
    torch.testing.assert_close(psnr(x, ref, 2.0) - psnr(x, ref, 1.0), torch.full((3,), 20 * math.log10(2), dtype=F64))
    assert torch.isinf(psnr(x, x, 1.0)).all() and (psnr(x, x, 1.0) > 0).all()
    with pytest.raises(ValueError, match="one shape"):
        psnr(x, ref[:2], 1.0)
    with pytest.raises(ValueError, match="data_range"):
        ssim(x, ref, 0.0)


def test_super_resolution_scores():
    g = torch.Generator().manual_seed(3)
    truth = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    low = downsample(truth, 2)
    sr = truth + 0.1 * torch.randn(truth.shape, generator=g)
    scores = super_resolution_scores(sr, truth, low, 2, 2.0)
    bicubic = bicubic_upsample(low, (8, 8))
    assert scores["super_resolved"]["psnr"] == pytest.approx(float(psnr(sr, truth, 2.0).mean()), rel=1e-12)
    assert scores["super_resolved"]["ssim"] == pytest.approx(float(ssim(sr, truth, 2.0).mean()), rel=1e-12)
    assert scores["bicubic"]["psnr"] == pytest.approx(float(psnr(bicubic, truth, 2.0).mean()), rel=1e-12)
    p = psnr(sr, truth, 2.0)
    assert scores["super_resolved"]["psnr_stderr"] == pytest.approx(float(p.std()) / 2, rel=1e-12)
    rms = float((downsample(sr, 2) - low).pow(2).mean().sqrt())
    assert scores["super_resolved"]["consistency_rms"] == pytest.approx(rms, rel=1e-6)
    exact = super_resolution_scores(truth, truth, low, 2, 2.0)["super_resolved"]
    assert exact["ssim"] == pytest.approx(1.0) and exact["consistency_rms"] == 0.0


def test_low_resolution_keeps_splits_and_labels():
    digits = sd.data.digits_dataset(n_test=297, seed=0)
    low = sd.data.low_resolution(digits, 2)
    assert low.train.shape == (digits.train.shape[0], 1, 4, 4) and low.data_shape == (1, 4, 4)
    assert torch.equal(low.train, downsample(digits.train, 2)) and torch.equal(low.test, downsample(digits.test, 2))
    assert torch.equal(low.train_labels, digits.train_labels) and torch.equal(low.test_labels, digits.test_labels)
    assert low.n_classes == digits.n_classes == 10
    with pytest.raises(ValueError, match="image Dataset"):
        sd.data.low_resolution(Dataset(torch.zeros(4, 2), torch.zeros(2, 2), "toy"), 2)


# ------------------------------------------------------------------------------------ the apps
TINY = ["train.steps=12", "train.batch_size=16", "progress=false", "threads=1", "device=cpu", "model.net.channels=8",
        "n_samples=6", "sampler.grid.n_steps=4"]  # fmt: skip
TINY_SR = [*TINY, "model.net.channel_mult=[1,2]", "model.net.attention_resolutions=[]"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny experiment=digits_sr run and one tiny experiment=digits_cascade run on top of it."""
    root = tmp_path_factory.mktemp("sr_apps")
    code, _, err = run_app("train", "experiment=digits_sr", *TINY_SR, f"hydra.run.dir={root / 'sr'}", cwd=root)
    assert code == 0, err
    code, _, err = run_app(
        "train", "experiment=digits_cascade", f"cascade.sr_dir={root / 'sr'}", *TINY, f"hydra.run.dir={root / 'cascade'}", cwd=root
    )
    assert code == 0, err
    return root


def test_digits_sr_reports_psnr_and_ssim_of_its_samples_beside_bicubic(runs):
    run = runs / "sr"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "super_resolution" and summary["n_images"] == 6 and summary["steps"] == 12
    assert summary["conditioning"] == "SuperResolution(factor=2, max_level=0.2, sample_level=0.05)"
    for name in ("super_resolved", "bicubic"):
        assert set(summary[name]) == {"psnr", "psnr_stderr", "ssim", "consistency_rms"}
    assert (run / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = np.load(run / "samples.npz")
    trained = sd.load_run(run, "cpu")
    truth = trained.data.test[:6]
    assert saved["samples"].shape == (6, 1, 8, 8) and np.array_equal(saved["truth"], truth.numpy())
    assert np.array_equal(saved["low_res"], downsample(truth, 2).numpy())
    # the numbers are those of the saved images; the bicubic ones follow from the held-out data alone
    data_range = float(trained.data.test.max() - trained.data.test.min())
    scores = super_resolution_scores(torch.from_numpy(saved["samples"]), truth, downsample(truth, 2), 2, data_range)
    for name in ("super_resolved", "bicubic"):
        for key in ("psnr", "ssim", "consistency_rms"):
            assert summary[name][key] == pytest.approx(scores[name][key], rel=1e-9, abs=1e-12), (name, key)
    # the samples are super_resolve on the run's EMA model with the config's sampler, seed 0
    assert isinstance(trained.conditioner, SuperResolution) and trained.conditioner.sample_level == 0.05
    sampler, grid = build_sampler(trained.config)
    with torch.no_grad():
        direct = super_resolve(
            trained.sde, trained.score_model, sampler, grid, trained.conditioner, downsample(truth, 2), batch_size=6, seed=0
        )
    torch.testing.assert_close(torch.from_numpy(saved["samples"]), direct.samples, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_sde_sample_super_resolves_held_out_or_given_low_res_images(runs, tmp_path):
    args = ["n_samples=6", "batch_size=6", "sampler=dpm_solver", "sampler.grid.n_steps=4", "progress=false", "device=cpu"]
    code, _, err = run_app("sample", f"run_dir={runs / 'sr'}", *args, f"hydra.run.dir={tmp_path / 'held_out'}", cwd=tmp_path)
    assert code == 0, err
    held_out = np.load(tmp_path / "held_out" / "samples.npz")
    test = sd.load_run(runs / "sr", "cpu").data.test
    assert held_out["samples"].shape == (6, 1, 8, 8) and np.isfinite(held_out["samples"]).all()
    assert np.array_equal(held_out["inputs"], downsample(test[:6], 2).numpy())
    assert (tmp_path / "held_out" / "inputs.png").is_file() and (tmp_path / "held_out" / "samples.png").is_file()
    assert json.loads((tmp_path / "held_out" / "sample_summary.json").read_text())["low_res"] == "held-out images, downsampled"

    # low_res=<npz>: image i mod N for sample i; the same images give the same samples
    np.savez(tmp_path / "low.npz", low_res=downsample(test[:3], 2).numpy())
    code, _, err = run_app(
        "sample", f"run_dir={runs / 'sr'}", *args, f"low_res={tmp_path / 'low.npz'}", f"hydra.run.dir={tmp_path / 'given'}", cwd=tmp_path
    )
    assert code == 0, err
    given = np.load(tmp_path / "given" / "samples.npz")
    assert np.array_equal(given["inputs"][3:], given["inputs"][:3]) and np.array_equal(given["inputs"][:3], held_out["inputs"][:3])
    assert np.array_equal(given["samples"][:3], held_out["samples"][:3])
    assert not np.allclose(given["samples"][3:], given["samples"][:3])  # own noise per sample

    np.savez(tmp_path / "bad.npz", low_res=np.zeros((2, 1, 8, 8), np.float32))
    code, _, err = run_app(
        "sample", f"run_dir={runs / 'sr'}", *args, f"low_res={tmp_path / 'bad.npz'}", f"hydra.run.dir={tmp_path / 'bad'}", cwd=tmp_path
    )
    assert code == 2 and err.count("\n") == 1 and "(N, 1, 4, 4)" in err, err


@pytest.mark.slow
def test_digits_cascade_super_resolves_its_base_samples(runs, tmp_path):
    run = runs / "cascade"
    saved = np.load(run / "samples.npz")
    assert saved["samples"].shape == (6, 1, 8, 8) and saved["samples_low_res"].shape == (6, 1, 4, 4)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["cascade_sr_dir"] == str(runs / "sr") and summary["n_samples"] == 6
    assert (run / "samples_low_res.png").is_file() and (run / "samples.png").is_file()
    # the 8x8 samples are the SR run's super-resolution of the 4x4 base samples (its sampler, seed 0)
    sr = sd.load_run(runs / "sr", "cpu")
    sampler, grid = build_sampler(sr.config)
    with torch.no_grad():
        up = super_resolve(
            sr.sde, sr.score_model, sampler, grid, sr.conditioner, torch.from_numpy(saved["samples_low_res"]), batch_size=6, seed=0
        )
    torch.testing.assert_close(torch.from_numpy(saved["samples_unclipped"]), up.samples, rtol=1e-5, atol=1e-5)

    code, _, err = run_app("sample", f"run_dir={run}", "n_samples=6", "batch_size=6", "sampler=dpm_solver", "sampler.grid.n_steps=4",
                        "progress=false", "device=cpu", f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path)  # fmt: skip
    assert code == 0, err
    sampled = np.load(tmp_path / "out" / "samples.npz")
    assert sampled["samples"].shape == (6, 1, 8, 8) and sampled["inputs"].shape == (6, 1, 4, 4)
    assert np.isfinite(sampled["samples"]).all() and (tmp_path / "out" / "inputs.png").is_file()


@pytest.mark.slow
def test_a_cascade_without_a_super_resolution_run_is_refused(runs, tmp_path):
    """cascade.sr_dir is required (???): leaving it out must not silently train a 4x4 model."""
    code, _, err = run_app("train", "experiment=digits_cascade", *TINY, f"hydra.run.dir={tmp_path / 'none'}", cwd=tmp_path)
    assert code != 0 and "cascade.sr_dir" in err, (code, err)


@pytest.mark.slow
def test_a_cascade_on_a_run_that_is_not_super_resolution_is_refused(runs, tmp_path):
    code, _, err = run_app(
        "train", "experiment=digits_cascade", f"cascade.sr_dir={runs / 'cascade'}", *TINY, f"hydra.run.dir={tmp_path / 'bad'}", cwd=tmp_path
    )
    assert code == 2 and err.count("\n") == 1 and "digits_sr" in err and "cascade.sr_dir" in err, err
    code, _, err = run_app(
        "train",
        "experiment=digits_cascade",
        f"cascade.sr_dir={tmp_path / 'nowhere'}",
        *TINY,
        f"hydra.run.dir={tmp_path / 'bad2'}",
        cwd=tmp_path,
    )
    assert code == 2 and err.count("\n") == 1 and "is not a directory" in err, err
