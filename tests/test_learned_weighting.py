"""EDM2's learned uncertainty weighting (Karras et al. 2024, Eq. 21): u(sigma) fits ln E[w err | sigma],
u = 0 is the plain loss, it trains and resumes bit for bit with the model, the config composes it on
the score-matching losses, and checkpoints without it load and train unchanged."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from apps import train_config
from omegaconf import OmegaConf, open_dict

import sde_diffusion as sd
from sde_diffusion.app.config import ConfigError, build_loss
from sde_diffusion.app.runs import build_experiment
from sde_diffusion.cli import _resume
from sde_diffusion.losses import plain_loss
from sde_diffusion.training import CheckpointError, evaluate_loss

F64 = torch.float64


def _compose(*overrides):
    return train_config("model.net.hidden_dim=16", "model.net.n_layers=2", "data.n_train=512", "data.n_test=128", *overrides)


def test_fitting_u_alone_recovers_the_log_of_the_mean_error_at_each_noise_level():
    """Minimising mean(err / e^u + u) over u alone, on fixed errors whose mean at each of five noise
    levels spans four decades, gives e^u(sigma) = the errors' mean at sigma (the minimiser of
    err e^-u + u is u = ln err on average); there the gradient in u, 1 - err / e^u, averages to zero."""
    gen = torch.Generator().manual_seed(0)
    sigmas = torch.tensor([0.02, 0.1, 0.5, 2.0, 20.0])
    log_means = torch.tensor([-4.0, -1.5, 0.0, 1.0, 3.0])
    per_level = 500
    sigma = sigmas.repeat_interleave(per_level)
    err = (log_means.repeat_interleave(per_level)).exp() * torch.empty(sigma.shape).exponential_(generator=gen)
    target = err.reshape(5, per_level).mean(dim=1).log()  # ln of the sample mean at each level
    weighting = sd.LearnedUncertainty()
    opt = torch.optim.Adam(weighting.parameters(), lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        u = weighting.u(sigma)
        (err * torch.exp(-u) + u).mean().backward()
        opt.step()
    with torch.no_grad():
        fitted = weighting.u(sigmas)
        torch.testing.assert_close(fitted, target, rtol=0, atol=0.02)
        # at u = ln(mean err) the gradient 1 - err / e^u is zero on average at every level
        grad = 1 - err.reshape(5, per_level) / target.exp()[:, None]
        torch.testing.assert_close(grad.mean(dim=1), torch.zeros(5), rtol=0, atol=1e-5)


def _model(sde):
    torch.manual_seed(0)
    return sd.EpsilonParameterization(sd.TimeMLP((2,), hidden_dim=16, n_layers=2), sde)


WEIGHTINGS = {
    "eps": dict(),
    "likelihood": dict(weighting=sd.LikelihoodWeighting()),
    "importance": dict(weighting=sd.ImportanceLikelihoodWeighting()),
    "edm": dict(weighting=sd.EDMWeighting(sigma_data=0.7)),
    "min_snr": dict(weighting=sd.MinSNRWeighting(), reduce="mean"),
    "logit_normal": dict(weighting=sd.NoiseWeighting(), proposal=sd.LogitNormalProposal()),
}


@pytest.mark.parametrize("name", list(WEIGHTINGS))
def test_u_zero_is_the_plain_loss_and_a_constant_u_scales_and_shifts_it(name):
    """At initialisation u = 0 and the loss is the plain per-sample loss exactly (w err / 1 + 0); with
    u = c it is w err e^-c + c, the same draws of t and noise; evaluation sees the plain loss."""
    sde = sd.VPSDE()
    model = _model(sde)
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    plain = functools.partial(sd.denoising_score_matching, **WEIGHTINGS[name])
    learned = sd.LearnedUncertainty(plain)
    with torch.no_grad():
        expected = plain(model, sde, x0, generator=torch.Generator().manual_seed(2))
        assert torch.equal(learned(model, sde, x0, generator=torch.Generator().manual_seed(2)), expected)
        learned.bias.fill_(0.7)
        shifted = learned(model, sde, x0, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(shifted, expected * math.exp(-0.7) + 0.7)
    assert plain_loss(learned) is plain and plain_loss(plain) is plain
    assert evaluate_loss(model, sde, x0, loss_fn=learned) == evaluate_loss(model, sde, x0, loss_fn=plain)


def test_u_is_a_function_of_c_noise_and_the_frequencies_do_not_touch_the_global_stream():
    """u sees sigma = s/m through c_noise = ln(sigma)/4 (so VE at sigma and VP at the same s/m agree);
    its Fourier frequencies come from its own seed, not the global random stream."""
    state = torch.get_rng_state()
    a, b = sd.LearnedUncertainty(), sd.LearnedUncertainty()
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.frequencies, b.frequencies) and not torch.equal(a.frequencies, sd.LearnedUncertainty(seed=1).frequencies)
    with torch.no_grad():
        a.weight.normal_(generator=torch.Generator().manual_seed(0))
    seen = []
    wrapped = sd.LearnedUncertainty.u

    def spy(self, sigma):
        seen.append(sigma)
        return wrapped(self, sigma)

    sde = sd.VPSDE()
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sd.LearnedUncertainty, "u", spy)
        a(_model(sde), sde, x0, generator=torch.Generator().manual_seed(0))
    t = sd.UniformTimeProposal().sample(sde, 16, 1e-5, generator=torch.Generator().manual_seed(0))
    m, s = sde.kernel(t)
    torch.testing.assert_close(seen[0], s / m)


def test_a_loss_that_is_not_denoising_score_matching_is_refused():
    with pytest.raises(TypeError, match="sliced_score_matching takes no uncertainty"):
        sd.LearnedUncertainty(sd.sliced_score_matching)
    with pytest.raises(ValueError, match="n_features"):
        sd.LearnedUncertainty(n_features=0)


def _trainer(run_dir, *, steps=30, resume=False, learned=True, ema="standard"):
    torch.manual_seed(123)  # network initialisation
    sde = sd.VESDE()
    model = sd.EDMPreconditioning(sd.TimeMLP((2,), hidden_dim=16, n_layers=2), sde, sigma_data=1.0)
    options = sd.TrainOptions(
        steps=steps, batch_size=32, lr=1e-2, warmup_steps=5, checkpoint_every=10, log_every=5, progress=False, resume=resume,
        ema=ema, ema_snapshot_every=5 if ema == "posthoc" else None,
    )
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    loss = functools.partial(sd.denoising_score_matching, weighting=sd.EDMWeighting(sigma_data=1.0))
    return sd.Trainer(model, sde, data, options, loss_fn=sd.LearnedUncertainty(loss) if learned else loss, run_dir=run_dir, seed=0)


@pytest.mark.parametrize("ema", ["standard", "posthoc"])
def test_resume_with_learned_weighting_is_bit_exact_and_u_trains_with_the_model(tmp_path, ema):
    """30 steps straight equal 20 steps then a resumed run to 30: the model, its EMA (or post-hoc EMA's
    profiles and every snapshot), u's parameters and the optimiser's state of both, bit for bit. u's
    parameters are in the optimiser and moved."""
    from test_training import _assert_same_state

    from sde_diffusion.training.posthoc_ema import load_snapshots

    full = _trainer(tmp_path / "full", ema=ema)
    n_model = len(list(full.model.parameters()))
    assert len(full.optimizer.param_groups[0]["params"]) == n_model + 2  # u's weight and bias, after the model's
    full.fit()
    half = _trainer(tmp_path / "half", steps=20, ema=ema)
    half.fit()
    resumed = _trainer(tmp_path / "half", resume=True, ema=ema)
    assert resumed.step == 20
    assert torch.equal(resumed.loss_fn.bias, half.loss_fn.bias)
    resumed.fit()
    a, b = full.state(), resumed.state()
    _assert_same_state(a, b)
    assert a["loss"].keys() == {"frequencies", "phases", "weight", "bias"}
    assert all(torch.equal(a["loss"][k], b["loss"][k]) for k in a["loss"])
    assert len(a["optimizer"]["state"]) == n_model + 2
    assert float(a["loss"]["bias"].abs()) > 0 and float(a["loss"]["weight"].abs().max()) > 0
    assert "frequencies" not in str(list(a["ema"]))  # the EMA averages the model alone
    if ema == "posthoc":
        snaps_full, snaps_resumed = (load_snapshots(t.snapshot_dir) for t in (full, resumed))
        assert [s["step"] for s in snaps_full] == [s["step"] for s in snaps_resumed] == list(range(5, 35, 5))
        for x, y in zip(snaps_full, snaps_resumed, strict=True):
            assert all(torch.equal(p[k], q[k]) for p, q in zip(x["parameters"], y["parameters"], strict=True) for k in p)


def test_a_checkpoint_without_u_loads_and_trains_and_a_switch_is_refused(tmp_path):
    """A run trained without learned weighting (the checkpoint layout of earlier versions: no 'loss'
    entry) resumes and trains unchanged; adding or dropping the learned weighting on resume is refused
    naming loss.learned_weighting."""
    from test_training import _assert_same_state

    plain = _trainer(tmp_path / "plain", steps=20, learned=False)
    plain.fit()
    assert "loss" not in plain.state()
    straight = _trainer(tmp_path / "straight", learned=False)
    straight.fit()
    again = _trainer(tmp_path / "plain", resume=True, learned=False)
    again.fit()
    _assert_same_state(straight.state(), again.state())
    with pytest.raises(CheckpointError, match=r"without a learned loss weighting.*loss.learned_weighting=false"):
        _trainer(tmp_path / "plain", resume=True)
    learned = _trainer(tmp_path / "learned", steps=10)
    learned.fit()
    with pytest.raises(CheckpointError, match=r"with a learned loss weighting.*loss.learned_weighting=true"):
        _trainer(tmp_path / "learned", resume=True, learned=False)


@pytest.mark.parametrize("loss", ["dsm", "edm", "dsm_likelihood", "dsm_importance", "ddpm_simple", "flow_matching"])
def test_the_key_composes_with_every_denoising_score_matching_loss(loss):
    extra = {"ddpm_simple": ["sde=ddpm", "sampler=ddpm"], "flow_matching": ["sde=rectified_flow", "model=mlp_velocity"]}.get(loss, [])
    extra += ["loss.weighting.sigma_data=1"] if loss == "edm" else []
    off = build_loss(_compose(f"loss={loss}", *extra))
    assert not isinstance(off, sd.LearnedUncertainty)
    on = build_loss(_compose(f"loss={loss}", "loss.learned_weighting=true", *extra))
    assert isinstance(on, sd.LearnedUncertainty)
    assert repr(on.loss_fn) == repr(off)  # the same plain loss inside
    exp = build_experiment(_compose(f"loss={loss}", "loss.learned_weighting=true", *extra))  # tried once on two points
    assert isinstance(exp.loss_fn, sd.LearnedUncertainty)


def test_the_key_is_refused_where_it_does_not_apply():
    with pytest.raises(Exception, match="Could not override 'loss.learned_weighting'"):
        _compose("loss=ssm", "loss.learned_weighting=true")
    with pytest.raises(ConfigError, match=r"loss.learned_weighting=true: .*sliced_score_matching takes no uncertainty"):
        build_loss(_compose("loss=ssm", "+loss.learned_weighting=true"))
    with pytest.raises(ConfigError, match="loss.learned_weighting must be true or false"):
        build_loss(_compose("loss.learned_weighting=2"))


def test_edm_with_learned_weighting_composes_and_trains_through_the_config_layer():
    """The recipe of benchmarks/recipes.py ('EDM + uncertainty'), as sde-train builds it, trains a few steps."""
    cfg = _compose("model.preconditioning=edm", "loss=edm", "loss.learned_weighting=true", "train.steps=5", "train.progress=false")
    exp = build_experiment(cfg)
    assert isinstance(exp.loss_fn, sd.LearnedUncertainty) and isinstance(exp.score_model, sd.EDMPreconditioning)
    assert exp.loss_fn.loss_fn.keywords["weighting"].sigma_data == float(exp.score_model.sigma_data)
    trainer = sd.Trainer(exp.score_model, exp.sde, exp.data.train, exp.options, loss_fn=exp.loss_fn, optimizer=exp.optimizer)
    result = trainer.fit()
    assert result.steps == 5 and math.isfinite(result.last_loss)
    assert float(exp.loss_fn.bias.detach().abs()) > 0


def test_resume_refuses_a_switch_of_the_key_also_against_a_config_saved_before_it_existed():
    saved = OmegaConf.to_container(_compose(), resolve=True)
    assert _resume.contradictions(saved, _compose()) == []
    changed = _resume.contradictions(saved, _compose("loss.learned_weighting=true"))
    assert len(changed) == 1 and changed[0].startswith("loss.learned_weighting (saved False, given True)")
    old = _compose()
    with open_dict(old.loss):
        del old.loss["learned_weighting"]
    old_saved = OmegaConf.to_container(old, resolve=True)
    assert _resume.contradictions(old_saved, _compose()) == []  # an earlier run resumes unchanged
    changed = _resume.contradictions(old_saved, _compose("loss.learned_weighting=true"))
    assert changed == ["loss.learned_weighting (saved before the key existed: False, given True)"]
    ssm = OmegaConf.to_container(_compose("loss=ssm"), resolve=True)
    assert _resume.contradictions(ssm, _compose("loss=ssm")) == []


def test_sde_train_records_it_and_a_resume_that_switches_it_is_refused_in_one_line(tmp_path):
    """sde-train with loss.learned_weighting=true says so in summary.json and keeps u in the
    checkpoint; a resume that drops it is refused naming the key, one that keeps it continues."""
    import json

    from apps import run_app

    from sde_diffusion.training import load_checkpoint

    run = tmp_path / "run"
    args = ["model.net.hidden_dim=16", "model.net.n_layers=2", "data.n_train=256", "data.n_test=64", "n_samples=32", "eval_points=0"]
    args += ["sampler.grid.n_steps=5", "progress=false", "loss=edm", "model.preconditioning=edm", f"hydra.run.dir={run}"]
    code, _, err = run_app("train", *args, "loss.learned_weighting=true", "train.steps=10", cwd=tmp_path)
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["learned_weighting"] is True and math.isfinite(summary["held_out_loss_ema"])
    assert "frequencies" in load_checkpoint(run / "checkpoints" / "last.pt")["loss"]
    code, _, err = run_app("train", *args, "loss.learned_weighting=false", "train.steps=20", "train.resume=true", cwd=tmp_path)
    assert code == 2 and "loss.learned_weighting (saved True, given False)" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_app("train", *args, "train.steps=20", "train.resume=true", cwd=tmp_path)
    assert code == 0, err
    assert int(load_checkpoint(run / "checkpoints" / "last.pt")["step"]) == 20


@pytest.mark.slow
def test_torchrun_with_learned_weighting_equals_one_process(tmp_path):
    """Two processes (gloo) train u as one process with the same global batch in two micro-batches:
    u's parameters live outside DDP, and the Trainer averages their gradients as DDP does the model's."""
    from test_distributed import TINY, _assert_same_weights, _single, _torchrun

    from sde_diffusion.training import load_checkpoint

    args = [*TINY, "train.steps=20", "loss=edm", "model.preconditioning=edm", "loss.learned_weighting=true"]
    ddp = _torchrun("sde-train", [*args, f"hydra.run.dir={tmp_path / 'ddp'}"], tmp_path)
    assert ddp.returncode == 0, ddp.stderr
    single = _single("sde-train", [*args, "train.grad_accumulation=2", f"hydra.run.dir={tmp_path / 'single'}"], tmp_path)
    assert single.returncode == 0, single.stderr
    _assert_same_weights(tmp_path / "ddp", tmp_path / "single")
    a, b = (load_checkpoint(tmp_path / d / "checkpoints" / "last.pt")["loss"] for d in ("ddp", "single"))
    for name in ("weight", "bias"):
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    assert float(a["bias"].abs()) > 0
