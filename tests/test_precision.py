"""Speed levers that must not change results: mixed precision (bf16, fp16 with a gradient scaler) and
torch.compile, each against the fp32 eager default within a stated tolerance; and the start-up
refusals of settings a machine cannot run."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

import sde_diffusion as sd
from analytic import mixture
from apps import run_app
from sde_diffusion.precision import MixedPrecision, accelerate, check_compile, check_precision
from sde_diffusion.training import load_checkpoint


def _mlp(seed=0, shape=(2,)):
    torch.manual_seed(seed)
    sde = sd.VPSDE()
    return sd.EpsilonParameterization(sd.TimeMLP(shape, hidden_dim=64, n_layers=3), sde), sde


def _trainer(run_dir=None, *, steps=300, precision="fp32", compile=False, resume=False, data=None):
    model, sde = _mlp()
    data = mixture(dim=2, seed=1).sample(2048, generator=torch.Generator().manual_seed(0)) if data is None else data
    options = sd.TrainOptions(
        steps=steps, batch_size=128, lr=3e-3, warmup_steps=20, checkpoint_every=10, log_every=10, progress=False, resume=resume
    )
    return sd.Trainer(model, sde, data, options, run_dir=run_dir, precision=precision, compile=compile)


def _loss_curve(trainer) -> torch.Tensor:
    losses = []
    while trainer.step < trainer.options.steps:
        losses.append(trainer.train_step()[0].item())
    return torch.tensor(losses)


# ----------------------------------------------------------------------------- mixed precision
def test_mixed_precision_runs_the_network_in_half_and_hands_back_float32():
    model, _ = _mlp()
    torch.nn.init.normal_(model.net.out.weight)  # zero at initialisation: give the output something to round
    seen = []
    model.net.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    bf16 = MixedPrecision(model, "bf16", "cpu")
    x, t = torch.randn(8, 2), torch.rand(8)
    out = bf16(x, t)
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    assert bf16.n_classes is None and bf16.sde is model.sde  # attributes pass through
    assert {id(p) for p in bf16.parameters()} == {id(p) for p in model.parameters()}  # the same float32 weights
    assert all(p.dtype == torch.float32 for p in bf16.parameters())
    # bf16 keeps 8 bits of mantissa: the output agrees with fp32 to about 1e-2 relative, not to 1e-6
    rel = ((out - model(x, t)).norm() / model(x, t).norm()).item()
    assert 1e-5 < rel < 3e-2, rel
    assert accelerate(model) is model  # the default changes nothing


def test_bf16_training_loss_curve_is_within_noise_of_fp32():
    """Same seed, same batches: the mean loss over the last 150 of 300 steps under bf16 lies within
    3 standard errors of fp32's (the step-to-step spread of the loss is the noise)."""
    fp32 = _loss_curve(_trainer())
    bf16 = _loss_curve(_trainer(precision="bf16"))
    tail32, tail16 = fp32[150:], bf16[150:]
    stderr = math.sqrt(tail32.var().item() / len(tail32) + tail16.var().item() / len(tail16))
    assert abs(tail32.mean().item() - tail16.mean().item()) < 3 * stderr, (tail32.mean(), tail16.mean(), stderr)
    assert tail16.mean() < 0.6 * bf16[:10].mean()  # and it trained
    assert not torch.equal(fp32, bf16)  # bf16 really ran


def test_fp16_scales_the_loss_skips_overflowing_steps_and_resumes_exactly(tmp_path):
    trainer = _trainer(tmp_path / "a", steps=20, precision="fp16")
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**80)  # fp16 gradients overflow at this scale
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train_step()  # an inf gradient: the scaler skips the step instead of stopping training
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.model.parameters(), strict=True))
    assert trainer.scaler.get_scale() < 2.0**80
    # a full run: resume from its step-10 checkpoint repeats the uninterrupted run bit for bit
    full = _trainer(tmp_path / "full", steps=20, precision="fp16")
    full.fit()
    assert "grad_scaler" in load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    part = _trainer(tmp_path / "part", steps=10, precision="fp16")
    part.fit()
    resumed = _trainer(tmp_path / "part", steps=20, precision="fp16", resume=True)
    resumed.fit()
    assert resumed.scaler.get_scale() == full.scaler.get_scale()
    for a, b in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_fp32_checkpoints_carry_no_scaler(tmp_path):
    _trainer(tmp_path, steps=2).fit()
    assert "grad_scaler" not in load_checkpoint(tmp_path / "checkpoints" / "last.pt")


# ------------------------------------------------------------------------------------- compile
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_and_eager_agree_to_1e_5_in_outputs_gradients_and_training():
    model, sde = _mlp()
    compiled = accelerate(model, compile=True)
    x, t = torch.randn(64, 2), torch.rand(64)
    assert torch.allclose(compiled(x, t), model(x, t), rtol=1e-5, atol=1e-6)
    (g_eager,) = torch.autograd.grad(model(x, t).square().sum(), model.net.out.weight)
    (g_compiled,) = torch.autograd.grad(compiled(x, t).square().sum(), model.net.out.weight)
    assert torch.allclose(g_compiled, g_eager, rtol=1e-5, atol=1e-6)
    # five training steps through the compiled network land on the eager weights
    eager, comp = _trainer(steps=5), _trainer(steps=5, compile=True)
    eager.fit(), comp.fit()
    for a, b in zip(eager.model.parameters(), comp.model.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- start-up refusals
def test_settings_this_machine_cannot_run_are_refused_in_one_line(monkeypatch):
    with pytest.raises(ValueError, match=r"^precision must be one of fp32, bf16, fp16, got 'fp8'$"):
        check_precision("fp8", "cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    with pytest.raises(ValueError, match=r"^precision=bf16: Tesla T4 has no bfloat16 arithmetic; use precision=fp16$"):
        check_precision("bf16", "cuda")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match=r"needs a C\+\+ compiler .* or use compile=false$"):
        check_compile(True, "cpu")
    assert check_compile(False, "cpu") is False  # nothing to check when compilation is off
    with pytest.raises(ValueError, match="compile must be true or false"):
        check_compile("yes", "cpu")


def test_the_apps_refuse_them_at_start_up(tmp_path):
    code, out, err = run_app("train", "precision=fp8", "train.steps=2", f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    assert code == 2 and err.count("\n") == 1 and "precision must be one of fp32, bf16, fp16" in err, err
    assert not (tmp_path / "a").exists()
    code, out, err = run_app("train", "precision=fp16", "train.steps=2", f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path)
    assert code == 2 and err.count("\n") == 1 and "precision=fp16 is for CUDA devices" in err, err


def test_bf16_training_and_sampling_in_the_apps(tmp_path):
    run = tmp_path / "run"
    args = ["train.steps=60", "train.progress=false", "n_samples=200", "sampler.grid.n_steps=20", "eval_points=0"]
    code, out, err = run_app("train", *args, "precision=bf16", f"hydra.run.dir={run}", cwd=tmp_path)
    assert code == 0, err
    assert ", bf16; run directory" in out.splitlines()[0]
    code, out, err = run_app("sample", f"run_dir={run}", "n_samples=200", "precision=bf16", f"hydra.run.dir={tmp_path / 's'}", cwd=tmp_path)
    assert code == 0 and ", bf16" in out.splitlines()[0], err
    # the same seed and noise in fp32: bf16's rounding moves the samples little
    code, _, err = run_app("sample", f"run_dir={run}", "n_samples=200", f"hydra.run.dir={tmp_path / 'f'}", cwd=tmp_path)
    assert code == 0, err
    import numpy as np

    bf16, fp32 = (np.load(tmp_path / d / "samples.npz")["samples"] for d in ("s", "f"))
    assert 0 < np.abs(bf16 - fp32).mean() < 0.05 * np.abs(fp32).mean()
    code, _, err = run_app("eval", f"run_dir={run}", "precision=bf16", "n_points=8", f"hydra.run.dir={tmp_path / 'e'}", cwd=tmp_path)
    assert code == 2 and "the ODE likelihood (bound=ode) runs the network in fp32" in err and err.count("\n") == 1, err


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="torch.compile on the CPU needs a C++ compiler")
def test_sde_eval_refuses_a_compiled_network_for_the_ode_likelihood(tmp_path):
    """The divergence's batched vector-Jacobian products (torch.vmap) fail on a compiled graph."""
    model, sde = _mlp()
    with pytest.raises(RuntimeError):
        sd.log_likelihood(sde, accelerate(model, compile=True), torch.randn(4, 2))
    run = tmp_path / "run"
    code, _, err = run_app("train", "train.steps=5", "n_samples=10", "eval_points=0", f"hydra.run.dir={run}", cwd=tmp_path)
    assert code == 0, err
    code, _, err = run_app("eval", f"run_dir={run}", "compile=true", "n_points=8", f"hydra.run.dir={tmp_path / 'e'}", cwd=tmp_path)
    assert code == 2 and "compile=true: the ODE likelihood (bound=ode)" in err and err.count("\n") == 1, err
