"""DDPM through the toolkit's runs: the hybrid loss's importance-sampling state is checkpointed and
resumes exactly, the configs the issue names compose and run end to end, ``sde-eval bound=vlb|elbo``
records what the bounds compute, and ``sampler.n_steps`` sets any sampler's grid."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from analytic import gaussian
from apps import train_config

import sde_diffusion as sd
from sde_diffusion._noise import PerSampleNoise
from sde_diffusion._seeding import derive_seed
from sde_diffusion.app.config import ConfigError, build_sampler
from sde_diffusion.likelihood.evaluate import evaluate_nll
from sde_diffusion.losses.vlb import step_terms
from sde_diffusion.sdes.discrete import DiscreteSchedule, linear_betas
from sde_diffusion.training import load_checkpoint

SHORT = DiscreteSchedule(linear_betas(10, 0.01, 0.3))


class _Crash(Exception):
    pass


def _trainer(run_dir, resume=False):
    torch.manual_seed(0)
    sde = sd.DDPMSDE(SHORT)
    model = sd.LearnedVarianceParameterization(sd.TimeMLP([2], hidden_dim=16, n_layers=2, learn_variance=True), sde)
    options = sd.TrainOptions(steps=30, batch_size=64, lr=1e-2, warmup_steps=5, checkpoint_every=10, log_every=10, progress=False, resume=resume)
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(1))
    return sd.Trainer(model, sde, data, options, loss_fn=sd.HybridLoss(importance=True), run_dir=run_dir, seed=3)


def test_the_hybrid_loss_with_importance_sampling_resumes_exactly(tmp_path):
    """The loss-aware sampler's history is part of the run's state: a run that crashes after a
    checkpoint and resumes draws the same steps with the same weights as one that never stopped.
    (Without the history in the checkpoint the resumed run would sample uniformly again.)"""
    full = _trainer(tmp_path / "full")
    full.fit()
    p = full.loss_fn.sampler.probabilities(SHORT.T)
    assert (p - 1 / SHORT.T).abs().max() > 1e-3  # importance sampling was active, not uniform

    crashed = _trainer(tmp_path / "crash")
    crashed.on_step.append(lambda tr: (_ for _ in ()).throw(_Crash()) if tr.step == 25 else None)
    with pytest.raises(_Crash):
        crashed.fit()
    assert "loss" in load_checkpoint(tmp_path / "crash" / "checkpoints" / "last.pt")
    resumed = _trainer(tmp_path / "crash", resume=True)
    assert resumed.step == 20
    resumed.fit()
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert torch.equal(full.loss_fn.sampler.losses, resumed.loss_fn.sampler.losses)
    assert torch.equal(full.loss_fn.sampler.seen, resumed.loss_fn.sampler.seen)


def _compose(overrides):
    return train_config(*overrides)


def test_sampler_n_steps_sets_the_grid_of_any_sampler():
    sde = sd.DDPMSDE()
    for sampler, n in (("ddpm", 7), ("ddim", 9), ("dpm_solver", 5)):
        _, grid = build_sampler(_compose([f"sampler={sampler}", f"sampler.n_steps={n}"]))
        ts = grid(sde, dtype=torch.float64)
        assert len(ts) == (n if sampler == "ddpm" else n + 1)  # the DDPM grid lists the chain's n steps
    _, grid = build_sampler(_compose(["sampler=ddpm"]))
    assert len(grid(sde, dtype=torch.float64)) == 1000
    with pytest.raises(ConfigError, match="sampler.n_steps: the grid check_grid takes no n_steps"):  # a function without n_steps
        build_sampler(_compose(["sampler=ddpm", "sampler.grid._target_=sde_diffusion.timesteps.check_grid", "sampler.n_steps=3"]), sde)


def test_bounds_refuse_what_they_cannot_compute():
    dist = gaussian(2)
    x = dist.sample(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    vp = sd.VPSDE()
    with pytest.raises(ValueError, match="sde=ddpm"):
        evaluate_nll(vp, dist.score_fn(vp), x, bound="vlb")
    with pytest.raises(ValueError, match="bound must be one of"):
        evaluate_nll(vp, dist.score_fn(vp), x, bound="kl")
    ddpm = sd.DDPMSDE(SHORT)
    with pytest.raises(ValueError, match="learned variances"):
        evaluate_nll(ddpm, dist.score_fn(ddpm), x, bound="vlb", variance="learned")
    digits = torch.randint(0, 17, (8, 2)).double() * 2 / 17 - 1
    with pytest.raises(ValueError, match="n_dequant=1"):
        evaluate_nll(ddpm, dist.score_fn(ddpm), digits, bound="vlb", levels=17, interval_width=2.0, n_dequant=2)


def test_vlb_of_discrete_data_is_reported_on_the_dequantized_scale():
    """For data on K levels the VLB bounds -log P(x) itself: bpd = VLB / (D ln 2), and the reported
    nats/dim are those of the density P / (w/K)^D on the bins, (bpd - log2(K / w)) ln 2, as the ODE's."""
    ddpm, dist = sd.DDPMSDE(SHORT), gaussian(2)
    x = torch.randint(0, 17, (64, 2), generator=torch.Generator().manual_seed(0)).double() * 2 / 17 - 1
    out = evaluate_nll(ddpm, dist.score_fn(ddpm), x, bound="vlb", levels=17, interval_width=2.0, batch_size=64)
    vlb = sd.discrete_vlb(dist.score_fn(ddpm), ddpm, x, variance="small", levels=17, interval=(-1.0, -1.0 + 2.0), generator=torch.Generator().manual_seed(derive_seed(0, 0)))
    bpd = vlb / (2 * math.log(2))
    assert out["bound"] == "vlb" and out["variance"] == "small" and out["nfe"] == SHORT.T
    assert out["bpd"] == pytest.approx(bpd.mean().item(), rel=1e-9)
    assert out["bpd_stderr"] == pytest.approx((bpd.std() / 8).item(), rel=1e-9)
    assert out["nll_nats_per_dim"] == pytest.approx((out["bpd"] - math.log2(17 / 2)) * math.log(2), rel=1e-9)


def _cli(module: str, *args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.mark.slow
def test_a_ddpm_run_with_learned_variances_trains_samples_and_reports_each_bound(tmp_path):
    """sde=ddpm loss=ddpm_hybrid model=mlp_learned_variance sampler=ddpm end to end; then sde-eval
    writes one record per bound whose numbers are those of the library calls on the loaded run."""
    run_dir = tmp_path / "run"
    proc = _cli(
        "sde_diffusion.cli.train", "sde=ddpm", "loss=ddpm_hybrid", "model=mlp_learned_variance", "sampler=ddpm",
        "sampler.n_steps=20", "sampler.fn.variance=learned", "train.steps=30", "train.progress=false",
        "n_samples=50", "eval_points=32", f"hydra.run.dir={run_dir}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "50 samples by ddpm (20 NFE" in proc.stdout
    for bound, extra in (("vlb", ["n_terms=10"]), ("elbo", ["n_time_samples=8"]), ("ode", [])):
        proc = _cli(
            "sde_diffusion.cli.eval", f"run_dir={run_dir}", "n_points=40", "batch_size=40", "progress=false", f"bound={bound}",
            *extra, f"hydra.run.dir={tmp_path / bound}", cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[-1].startswith(f"sde-eval: {dict(vlb='VLB', elbo='ELBO', ode='NLL')[bound]} ")
    records = json.loads((run_dir / "eval.json").read_text())
    assert [r["bound"] for r in records] == ["vlb", "elbo", "ode"]
    vlb, elbo, _ = records
    assert (vlb["variance"], vlb["n_terms"], vlb["nfe"], elbo["n_time_samples"], elbo["nfe"]) == ("learned", 10, 10, 8, 8)
    trained = sd.load_run(run_dir, "cpu")
    x = trained.data.test[:40]
    gen = torch.Generator().manual_seed(derive_seed(0, 0))
    direct = sd.discrete_vlb(trained.score_model, trained.sde, x, variance="learned", n_terms=10, generator=gen) / 2
    assert vlb["nll_nats_per_dim"] == pytest.approx(direct.mean().item(), rel=1e-5)
    gen = torch.Generator().manual_seed(derive_seed(0, 0))
    direct = sd.continuous_elbo(trained.score_model, trained.sde, x, eps=1e-5, n_time_samples=8, generator=gen) / 2
    assert elbo["nll_nats_per_dim"] == pytest.approx(direct.mean().item(), rel=1e-5)


def test_the_hybrid_loss_with_the_discretized_decoder_has_finite_gradients():
    """The decoder's CDF differences are taken in float64 with each branch of the tail choice fed only
    inputs it can take: at step 1 with an untrained U-Net (means far from most pixels, log-variances
    interpolated between log beta_1 and log beta_tilde_2), no 0 * inf = NaN reaches the gradient."""
    torch.manual_seed(0)
    sde = sd.DDPMSDE()
    net = sd.UNet([1, 8, 8], channels=8, channel_mult=[1, 2], n_res_blocks=1, learn_variance=True)
    torch.nn.init.normal_(net.out[-1].weight, std=0.3)  # a non-zero start: extreme means and variances
    model = sd.LearnedVarianceParameterization(net, sde)
    x0 = torch.randint(0, 17, (16, 1, 8, 8), generator=torch.Generator().manual_seed(1)).float() * 2 / 17 - 1
    loss = sd.HybridLoss(levels=17)
    chain = sde.discrete
    t = torch.ones(16) / chain.T
    m, s = sde.kernel(t)
    x1 = m[:, None, None, None] * x0 + s[:, None, None, None] * torch.randn_like(x0)
    eps, v = model(x1, t, variance=True)
    eps = -s[:, None, None, None] * eps
    i = torch.ones(16, dtype=torch.long)
    terms = step_terms(chain, x0, x1, i, eps.detach(), chain.reverse_log_variance(i, "learned", v), 17)
    terms.sum().backward()
    assert torch.isfinite(terms).all() and all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    net.zero_grad()
    loss(model, sde, x0, generator=torch.Generator().manual_seed(0)).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_ddim_runs_on_the_discrete_chain_and_at_eta_1_is_ddpm_with_beta_tilde():
    """On the chain's own strided steps, DDIM with eta = 1 is DDPM's ancestral step with the posterior
    variance beta_tilde (Song, Meng, Ermon 2021, Sec. 4.1): with the same noise both samplers draw the
    same samples; eta = 0 is deterministic on the same grid."""
    sde, dist = sd.DDPMSDE(), gaussian(2)
    ts = sd.discrete_time_grid(sde, 50, dtype=torch.float64)
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ddpm = sd.ddpm(sde, dist.score_fn(sde), x_T, ts, variance="small", generator=PerSampleNoise(5, torch.arange(64)))
    ddim = sd.ddim(sde, dist.score_fn(sde), x_T, ts, eta=1.0, denoise_to_zero=True, generator=PerSampleNoise(5, torch.arange(64)))
    torch.testing.assert_close(ddim.samples, ddpm.samples, rtol=0, atol=1e-10)
    assert ddpm.nfe == ddim.nfe == 50
    a, b = (sd.ddim(sde, dist.score_fn(sde), x_T, ts, eta=0.0, generator=torch.Generator().manual_seed(s)).samples for s in (1, 2))
    assert torch.equal(a, b)


def test_the_elbo_of_discrete_data_uses_the_discretized_decoder_a_third_of_a_bin_wide():
    """bound=elbo on data on K levels scores them as they are, with the decoder discretized to the
    levels at the time where s/m = w / 3K (elbo_eps=auto); bound=elbo_dequantized dequantizes and
    uses the Gaussian decoder at eps, as the ODE sees the data."""
    vp, dist = sd.VPSDE(), gaussian(2)
    x = torch.randint(0, 17, (64, 2), generator=torch.Generator().manual_seed(0)).double() * 2 / 17 - 1
    out = evaluate_nll(vp, dist.score_fn(vp), x, bound="elbo", levels=17, interval_width=2.0, batch_size=64, n_time_samples=8)
    m, s = vp.kernel(torch.tensor(out["elbo_eps"], dtype=torch.float64))
    assert float(s / m) == pytest.approx(2 / (3 * 17), rel=1e-6)
    gen = torch.Generator().manual_seed(derive_seed(0, 0))
    direct = sd.continuous_elbo(dist.score_fn(vp), vp, x, eps=out["elbo_eps"], n_time_samples=8, levels=17, interval=(-1.0, 1.0), generator=gen)
    assert out["bpd"] == pytest.approx((direct / (2 * math.log(2))).mean().item(), rel=1e-9)
    deq = evaluate_nll(vp, dist.score_fn(vp), x, bound="elbo_dequantized", levels=17, interval_width=2.0, batch_size=64, n_time_samples=8)
    assert deq["elbo_eps"] == 1e-5 and deq["bound"] == "elbo_dequantized"
