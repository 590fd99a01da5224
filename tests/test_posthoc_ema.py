"""Post-hoc EMA (Karras et al. 2024, Sec. 3 and App. C): the power-function profiles, their
snapshots, the least-squares reconstruction, training with them, resume and old checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sde_diffusion.training.posthoc_ema import (
    PostHocEMA,
    PowerFunctionEMA,
    gamma_from_sigma_rel,
    kernel_inner_products,
    load_snapshots,
    reconstruct,
    sigma_rel_from_gamma,
)


class Vector(nn.Module):
    """A model that is one parameter vector, set by hand to follow a trajectory."""

    def __init__(self, dim: int, dtype=torch.float32):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(dim, dtype=dtype))


def test_sigma_rel_and_gamma_are_inverse():
    # EDM2 (Sec. 3.1): sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94
    assert gamma_from_sigma_rel(0.05) == pytest.approx(16.97, abs=0.01)
    assert gamma_from_sigma_rel(0.10) == pytest.approx(6.94, abs=0.01)
    for sigma_rel in (0.01, 0.05, 0.08, 0.2, 0.28):
        assert sigma_rel_from_gamma(gamma_from_sigma_rel(sigma_rel)) == pytest.approx(sigma_rel, rel=1e-12)
    with pytest.raises(ValueError, match="sigma_rel"):
        gamma_from_sigma_rel(0.3)


def test_power_ema_weights_are_the_kernel_mass_of_each_step():
    """theta_hat_T with beta_t = (1 - 1/t)^(gamma+1) weighs step k by (k^(g+1) - (k-1)^(g+1)) / T^(g+1):
    a trajectory of unit vectors (step k sets e_k) makes the average that weight vector."""
    steps = 50
    model = Vector(steps, torch.float64)
    ema = PowerFunctionEMA(model, 0.08)
    for k in range(steps):
        with torch.no_grad():
            model.theta.zero_()[k] = 1.0
        ema.update()
    k = torch.arange(1, steps + 1, dtype=torch.float64)
    g = ema.gamma
    expected = (k ** (g + 1) - (k - 1) ** (g + 1)) / steps ** (g + 1)
    torch.testing.assert_close(ema.module.theta, expected, rtol=1e-12, atol=1e-15)


def test_kernel_inner_products_match_quadrature():
    """Eq. 151 against the integral of (g_a + 1) t^g_a / t_a^(g_a+1) (g_b + 1) t^g_b / t_b^(g_b+1) on [0, min]."""
    for t_a, g_a, t_b, g_b in ((300.0, 6.9, 1000.0, 17.0), (1000.0, 17.0, 300.0, 6.9), (500.0, 9.45, 500.0, 9.45)):
        tau = torch.linspace(0, min(t_a, t_b), 200_001, dtype=torch.float64)
        f = (g_a + 1) * tau**g_a / t_a ** (g_a + 1) * (g_b + 1) * tau**g_b / t_b ** (g_b + 1)
        quadrature = torch.trapezoid(f, tau)
        assert float(kernel_inner_products(t_a, g_a, t_b, g_b)) == pytest.approx(float(quadrature), rel=1e-6)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_reconstruction_equals_a_directly_tracked_profile():
    """sigma_rel = 0.08 reconstructed from the 0.05 and 0.10 profiles' snapshots (every twentieth of
    the run) equals the 0.08 profile tracked directly, to 1e-4 of its norm, on a trajectory that
    starts at zero (a smooth drift plus a random walk: the error is not hidden by a large offset)."""
    steps, every, dim = 400, 20, 64
    gen = torch.Generator().manual_seed(0)
    walk = torch.randn(steps, dim, generator=gen, dtype=torch.float64).cumsum(0) / math.sqrt(steps)
    drift = torch.sin(torch.linspace(0, 6, steps, dtype=torch.float64))[:, None] * torch.linspace(-1, 1, dim, dtype=torch.float64)
    trajectory = (walk + drift).float()
    model = Vector(dim)
    tracked, direct = PostHocEMA(model, (0.05, 0.10)), PowerFunctionEMA(model, 0.08)
    snapshots = []
    for step in range(1, steps + 1):
        with torch.no_grad():
            model.theta.copy_(trajectory[step - 1])
        tracked.update()
        direct.update()
        if step % every == 0:
            snapshots.append(_copied(tracked.snapshot(step)))
    result = reconstruct(snapshots, 0.08)
    error = _relative_error(result.state["theta"], direct.module.theta.detach())
    assert result.step == steps and result.n_snapshots == steps // every
    assert result.kernel_error < 5e-3  # the L2 misfit of the kernel; the weights' error is far smaller
    print(f"relative error {error:.2e}, kernel error {result.kernel_error:.2e}")
    assert error < 1e-4, error
    # with the final snapshots alone (two kernels) the same target is far off: the snapshots matter
    assert _relative_error(reconstruct(snapshots[-1:], 0.08).state["theta"], direct.module.theta.detach()) > 10 * error


def _copied(snapshot: dict) -> dict:
    """A snapshot detached from the live profiles (as written to disk)."""
    return {
        **snapshot,
        "parameters": [{k: v.clone() for k, v in p.items()} for p in snapshot["parameters"]],
        "buffers": {k: v.clone() for k, v in snapshot["buffers"].items()},
    }


def _trainer(run_dir, *, steps=40, resume=False, **opts):
    import sde_diffusion as sd

    torch.manual_seed(123)  # network initialisation
    sde = sd.VPSDE()
    model = sd.EpsilonParameterization(sd.TimeMLP((2,), hidden_dim=16, n_layers=2), sde)
    options = sd.TrainOptions(
        steps=steps, batch_size=32, lr=1e-2, warmup_steps=5, checkpoint_every=10, log_every=5, progress=False, resume=resume, **opts
    )
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    return sd.Trainer(model, sde, data, options, run_dir=run_dir, seed=0)


def test_training_reconstruction_equals_a_directly_tracked_profile(tmp_path):
    """A small real training with train.ema=posthoc: sigma_rel 0.08 reconstructed from the snapshots
    on disk equals the 0.08 profile tracked beside it, to 1e-4 of the weights' change over the run."""
    trainer = _trainer(tmp_path, steps=200, ema="posthoc", ema_snapshot_every=10)
    initial = torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])
    direct = PowerFunctionEMA(trainer.model, 0.08)
    trainer.on_step.append(lambda t: direct.update())
    trainer.fit()
    result = reconstruct(load_snapshots(trainer.snapshot_dir), 0.08)
    names = [name for name, _ in direct.module.named_parameters()]
    rebuilt = torch.cat([result.state[name].flatten() for name in names])
    tracked = torch.cat([p.detach().flatten() for p in direct.module.parameters()])
    error = float((rebuilt - tracked).norm())
    print(f"relative to the weights {error / float(tracked.norm()):.2e}, to their change {error / float((tracked - initial).norm()):.2e}")
    assert result.n_snapshots == 20 and result.step == 200
    assert error < 1e-4 * float((tracked - initial).norm())


def _snapshots_equal(a, b):
    for sa, sb in zip(load_snapshots(a), load_snapshots(b), strict=True):
        assert sa["step"] == sb["step"] and sa["sigma_rel"] == sb["sigma_rel"]
        for pa, pb in zip(sa["parameters"], sb["parameters"], strict=True):
            assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def test_resume_with_posthoc_ema_is_bit_exact(tmp_path):
    """40 steps straight equal 20 steps, then a resumed run to 40 (the profiles' weights and counts,
    the model, the optimiser, and every snapshot); a run killed after a snapshot that its last checkpoint
    does not cover has that snapshot rewritten by the resumed run."""
    from test_training import _assert_same_state, _Crash, _crash_at

    opts = dict(ema="posthoc", ema_snapshot_every=5)
    full = _trainer(tmp_path / "full", **opts)
    full.fit()
    assert [s["step"] for s in load_snapshots(full.snapshot_dir)] == list(range(5, 41, 5))

    half = _trainer(tmp_path / "half", steps=20, **opts)
    half.fit()
    resumed = _trainer(tmp_path / "half", resume=True, **opts)
    assert resumed.step == 20
    resumed.fit()
    _assert_same_state(full.state(), resumed.state())
    _snapshots_equal(full.snapshot_dir, resumed.snapshot_dir)

    crashed = _trainer(tmp_path / "crash", **opts)
    crashed.on_step.append(_crash_at(25))  # after the snapshot of step 25, 5 steps after the checkpoint
    with pytest.raises(_Crash):
        crashed.fit()
    assert (crashed.snapshot_dir / "step-000000025.pt").exists()
    again = _trainer(tmp_path / "crash", resume=True, **opts)
    assert not (crashed.snapshot_dir / "step-000000025.pt").exists()  # written after the checkpoint: discarded
    again.fit()
    _assert_same_state(full.state(), again.state())
    _snapshots_equal(full.snapshot_dir, again.snapshot_dir)


def test_standard_ema_checkpoints_keep_their_layout_and_load(tmp_path):
    """train.ema defaults to the standard EMA, whose checkpoint entry is unchanged (``module.<name>``,
    ``n_averaged``); ema_weights reads it and post-hoc EMA's first profile alike."""
    from sde_diffusion.training.posthoc_ema import ema_weights

    standard = _trainer(tmp_path / "standard", steps=10)
    assert standard.options.ema == "standard"
    standard.fit()
    state = standard.state()
    assert set(state["ema"]) == {f"module.{k}" for k in standard.model.state_dict()} | {"n_averaged"}
    assert standard.snapshot_dir is not None and not standard.snapshot_dir.exists()
    resumed = _trainer(tmp_path / "standard", steps=10, resume=True)
    for name, value in ema_weights(state["ema"]).items():
        assert torch.equal(resumed.ema_model.state_dict()[name], value)
    posthoc = _trainer(tmp_path / "posthoc", steps=10, ema="posthoc")
    posthoc.fit()
    weights = ema_weights(posthoc.state()["ema"])
    assert weights.keys() == posthoc.model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in posthoc.ema.profiles[0].module.state_dict().items())


def test_posthoc_options_are_checked():
    import sde_diffusion as sd

    assert sd.TrainOptions(steps=300).ema_snapshot_every == 15  # a twentieth of the run by default
    for bad, match in (
        (dict(ema="power"), "train.ema must be one of standard, posthoc"),
        (dict(ema_sigma_rel=[0.05, 0.05]), "distinct"),
        (dict(ema_sigma_rel=[0.5]), "train.ema_sigma_rel must be a number in"),
        (dict(ema_snapshot_every=0), "train.ema_snapshot_every"),
    ):
        with pytest.raises(ValueError, match=match):
            sd.TrainOptions(**bad)


@pytest.mark.slow
def test_apps_train_sweep_and_sample_a_posthoc_ema(tmp_path):
    """sde-train train.ema=posthoc, then sde-ema's sweep (the tracked width reconstructs the run's own
    EMA weights exactly), sde-sample and sde-eval with weights=posthoc; refusals in one line."""
    import json

    from apps import run_app

    from sde_diffusion.app.runs import load_run

    run = tmp_path / "run"
    common = ["train.steps=60", "train.batch_size=64", "n_samples=50", "eval_points=0", "sampler.grid.n_steps=10", "progress=false"]
    code, _, err = run_app("train", *common, "train.ema=posthoc", "train.ema_snapshot_every=10", f"hydra.run.dir={run}", cwd=tmp_path)
    assert code == 0, err
    assert json.loads((run / "summary.json").read_text())["ema_weights"] == "post-hoc EMA's profile sigma_rel 0.05 of 0.05, 0.1"
    code, out, err = run_app("ema", f"run_dir={run}", "sigma_rel=[0.05,0.08]", "n_points=200", f"hydra.run.dir={tmp_path / 'ema'}", cwd=tmp_path)
    assert code == 0, err
    record = json.loads((run / "posthoc_ema.json").read_text())
    assert [r["sigma_rel"] for r in record["sweep"]] == [0.05, 0.08] and record["sweep"][0]["kernel_error"] < 1e-6
    assert record["sweep"][0]["held_out_loss"] == pytest.approx(record["held_out_loss_ema"], rel=1e-6)  # the first profile
    assert "best sigma_rel" in out and (run / "checkpoints" / "posthoc_ema" / f"sigma_rel-{record['best_sigma_rel']:.3f}.pt").is_file()
    raw = load_run(run, "cpu", weights="raw")
    assert record["held_out_loss_raw"] != record["held_out_loss_ema"] and f"the raw weights: {record['held_out_loss_raw']:.5f}" in out
    # two widths: the best is one of the sweep's ends, and the line says a width beyond it may be better
    assert "it is the sweep's narrowest width" in out or "it is the sweep's widest width" in out
    assert ("the raw weights beat every average" in out) == (record["held_out_loss_raw"] < min(r["held_out_loss"] for r in record["sweep"]))
    assert raw.step == record["step"]
    ema, posthoc = load_run(run, "cpu"), load_run(run, "cpu", weights="posthoc", sigma_rel=0.05)
    for (name, a), b in zip(ema.score_model.state_dict().items(), posthoc.score_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    code, out, err = run_app(
        "sample", f"run_dir={run}", "weights=posthoc", "sigma_rel=0.07", "n_samples=20", f"hydra.run.dir={tmp_path / 's'}", cwd=tmp_path
    )
    assert code == 0, err
    assert json.loads((tmp_path / "s" / "sample_summary.json").read_text())["sigma_rel"] == 0.07
    code, _, err = run_app("eval", f"run_dir={run}", "weights=posthoc", "sigma_rel=0.07", "n_points=8", f"hydra.run.dir={tmp_path / 'e'}", cwd=tmp_path)
    assert code == 0, err

    standard = tmp_path / "standard"
    assert run_app("train", *common, f"hydra.run.dir={standard}", cwd=tmp_path)[0] == 0
    code, _, err = run_app("ema", f"run_dir={standard}", f"hydra.run.dir={tmp_path / 'ema2'}", cwd=tmp_path)
    assert code == 2 and err.count("\n") == 1 and "train.ema=posthoc" in err
    code, _, err = run_app("sample", f"run_dir={standard}", "sigma_rel=0.07", f"hydra.run.dir={tmp_path / 's2'}", cwd=tmp_path)
    assert code == 2 and "add weights=posthoc" in err
    code, _, err = run_app("sample", f"run_dir={standard}", "weights=posthoc", "sigma_rel=0.07", f"hydra.run.dir={tmp_path / 's3'}", cwd=tmp_path)
    assert code == 2 and "train.ema=posthoc" in err


@pytest.mark.slow
def test_torchrun_posthoc_ema_equals_one_process(tmp_path):
    """Two processes (gloo) with train.ema=posthoc train, average and snapshot as one process with
    the same global batch in two micro-batches; rank 0 alone writes the snapshots."""
    from test_distributed import TINY, _assert_same_weights, _single, _torchrun

    args = [*TINY, "train.steps=20", "train.ema=posthoc", "train.ema_snapshot_every=5"]
    ddp = _torchrun("sde-train", [*args, f"hydra.run.dir={tmp_path / 'ddp'}"], tmp_path)
    assert ddp.returncode == 0, ddp.stderr
    single = _single("sde-train", [*args, "train.grad_accumulation=2", f"hydra.run.dir={tmp_path / 'single'}"], tmp_path)
    assert single.returncode == 0, single.stderr
    _assert_same_weights(tmp_path / "ddp", tmp_path / "single")  # the model and every profile
    a, b = (load_snapshots(tmp_path / d / "checkpoints" / "ema_snapshots") for d in ("ddp", "single"))
    assert [s["step"] for s in a] == [s["step"] for s in b] == [5, 10, 15, 20]
    for sa, sb in zip(a, b, strict=True):
        for pa, pb in zip(sa["parameters"], sb["parameters"], strict=True):
            for name in pa:
                torch.testing.assert_close(pa[name], pb[name], rtol=0, atol=1e-6)
