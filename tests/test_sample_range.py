"""Samples that leave the data's range: the check, its advice, and the apps' summaries and warnings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import sde_diffusion as sd
from apps import run_app
from sde_diffusion.sample_range import MATERIAL_FRACTION, MATERIAL_RATIO, range_advice, sample_range


def test_the_fraction_outside_counts_values_beyond_the_widened_range():
    data = torch.tensor([[-1.0, 0.0], [1.0, 0.5]])  # range [-1, 1], width 2: with margin 0.1, [-1.2, 1.2]
    samples = torch.tensor([[-1.19, 1.19], [1.21, -1.5], [0.0, 3.0], [0.5, 0.5]])
    r = sample_range(samples, data, margin=0.1)
    assert (r.low, r.high) == (-1.0, 1.0)
    assert r.fraction_outside == pytest.approx(3 / 8)
    assert r.max_abs == pytest.approx(3.0) and r.max_abs_ratio == pytest.approx(3.0)
    assert r.material and r.n_nonfinite == 0
    assert sample_range(samples, data, margin=0.5).fraction_outside == pytest.approx(1 / 8)  # [-2, 2]: only 3.0 is outside


def test_samples_of_the_data_distribution_are_not_flagged_and_diverged_ones_are():
    g = torch.Generator().manual_seed(0)
    data, samples = torch.rand(2000, 1, 4, 4, generator=g) * 2 - 1, torch.rand(2000, 1, 4, 4, generator=g) * 2 - 1
    good = sample_range(samples, data)
    assert good.fraction_outside == 0 and not good.material
    spread = sample_range(samples * 40, data)  # the README's EDM recipe before its fix: values to +-40 on data in [-1, 1]
    assert spread.fraction_outside > 0.9 and spread.max_abs_ratio > 30 and spread.material
    few_far = samples.clone()
    few_far[0, 0, 0, 0] = 1.1 * MATERIAL_RATIO  # one value past MATERIAL_RATIO times the data's largest |x|
    assert sample_range(few_far, data).fraction_outside < MATERIAL_FRACTION and sample_range(few_far, data).material
    nan = samples.clone()
    nan[3] = float("nan")
    r = sample_range(nan, data)
    assert r.n_nonfinite == 16 and r.material and r.fraction_outside == 0 and "16 not finite" in r.text()


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="per-sample shape"):
        sample_range(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="margin must be a number >= 0"):
        sample_range(torch.zeros(3, 2), torch.zeros(3, 2), margin=-0.1)


def test_the_advice_blames_the_ema_only_when_the_raw_weights_stay_in_range():
    data = torch.linspace(-1, 1, 100)[:, None]
    bad, fine = sample_range(data * 30, data), sample_range(data, data)
    assert "the EMA still averages early" in range_advice(bad, fine) and "weights=raw" in range_advice(bad, fine)
    advice = range_advice(bad, sample_range(data * 30, data), hint="use model=mlp_edm")
    assert "not yet good enough" in advice and "EMA" not in advice and advice.endswith("use model=mlp_edm")
    assert "the EMA lags as well" in range_advice(bad, sample_range(data * 1.5, data))


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_an_untrained_edm_model_is_flagged_with_the_cause_and_the_fix(tmp_path):
    """A few steps of sde=edm with the raw network (model.preconditioning=none): Heun's samples stay near
    the prior's N(0, 80^2), far outside the checkerboard's [-4, 4]. The summary records it, a warning
    names the fix."""
    code, out, err = run_app(
        "train", "sde=edm", "model.preconditioning=none", "sampler=heun", "sampler.grid.eps=0.002", "sampler.grid.n_steps=5", "train.steps=3",
        "eval_points=0", "n_samples=200", "progress=false", "hydra.run.dir=run", cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    r = _summary(tmp_path / "run")["sample_range"]
    assert r["material"] and r["fraction_outside"] > 0.5 and r["max_abs_ratio"] > 5 and r["of"] == "samples"
    assert _summary(tmp_path / "run")["raw_weights_check"]["sample_range"]["material"]
    warning = [line for line in out.splitlines() if "WARNING: the samples leave the data's range" in line]
    assert len(warning) == 1 and "EDM's preconditioning (model.preconditioning=edm)" in warning[0], out
    assert f"{100 * r['fraction_outside']:.1f}% of values outside the data's range" in out.splitlines()[-1]


@pytest.mark.slow
def test_samples_in_range_give_no_warning(tmp_path):
    code, out, err = run_app(
        "train", "sampler.grid.n_steps=200", "train.steps=1500", "eval_points=0", "n_samples=500", "progress=false",
        "hydra.run.dir=run", cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    s = _summary(tmp_path / "run")
    assert not s["sample_range"]["material"] and "raw_weights_check" not in s
    assert "WARNING: the samples" not in out


def test_the_ema_lag_warning_fires_in_one_direction_only():
    from sde_diffusion.tasks.score import _warnings

    class Exp:
        options = sd.TrainOptions()

    fine = sample_range(torch.zeros(4, 2), torch.tensor([[-1.0, 1.0]]))
    run = Path("runs/a")
    lag = _warnings(Exp(), run, fine, None, loss_ema=1.15, loss_raw=1.0, latent=False)
    assert len(lag) == 1 and "1.15x the raw weights'" in lag[0] and "lower train.ema_decay" in lag[0]
    assert _warnings(Exp(), run, fine, None, loss_ema=1.0, loss_raw=3.0, latent=False) == []  # raw far worse: what the EMA is for
    assert _warnings(Exp(), run, fine, None, loss_ema=1.05, loss_raw=1.0, latent=False) == []
    Exp.options = sd.TrainOptions(ema="posthoc")  # its decay is not a key: the width is chosen after training
    lag = _warnings(Exp(), run, fine, None, loss_ema=1.15, loss_raw=1.0, latent=False)
    assert "train.ema_decay" not in lag[0] and "sde-ema run_dir=runs/a" in lag[0]


def test_the_sweep_table_shows_the_range_and_names_the_runs_that_stray(tmp_path, capsys):
    from sde_diffusion.cli.summarize import summarize

    data = torch.linspace(-1, 1, 100)[:, None]
    for name, scale in (("0", 1.0), ("1", 30.0)):
        run = tmp_path / name
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- seed={name}\n")
        r = sample_range(data * scale, data)
        summary = {
            "steps": 10,
            "samples_outside_range": r.fraction_outside,
            "samples_max_abs_ratio": r.max_abs_ratio,
            "sample_range": r.as_dict(),
        }
        (run / "summary.json").write_text(json.dumps(summary))
    rows, shown = summarize(tmp_path)
    assert {"samples_outside_range", "samples_max_abs_ratio"} <= set(shown)
    out = capsys.readouterr().out
    assert "WARNING: the samples of 1 run(s) leave the data's range" in out and out.rstrip().endswith(": 1")


@pytest.mark.slow
def test_the_readme_edm_recipe_gives_samples_in_the_data_range(tmp_path):
    """The README's recipe for sde=edm (EDM's preconditioning, model=mlp_edm), at its 2,000 steps:
    Heun's samples stay in the checkerboard's range (with model=mlp they spread to +-90)."""
    code, out, err = run_app(
        "train", "sde=edm", "model=mlp_edm", "train.steps=2000", "sampler=heun", "sampler.grid.eps=0.002",
        "eval_points=0", "n_samples=1000", "progress=false", "hydra.run.dir=run", cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    s = _summary(tmp_path / "run")
    assert not s["sample_range"]["material"] and s["sliced_w2_vs_held_out"] < 0.4, s
    assert "WARNING" not in out


def test_the_ema_lag_check_works_for_negative_losses():
    """Sliced score matching's loss is negative: the EMA lags when its loss is above the raw
    weights' by more than a tenth of their magnitude."""
    from sde_diffusion.tasks.score import _warnings

    class Exp:
        options = sd.TrainOptions()

    fine = sample_range(torch.zeros(4, 2), torch.tensor([[-1.0, 1.0]]))
    lag = _warnings(Exp(), Path("run"), fine, None, loss_ema=-5.0, loss_raw=-6.0, latent=False)
    assert len(lag) == 1 and "is 1 above the raw weights' -6.0000" in lag[0]
    assert _warnings(Exp(), Path("run"), fine, None, loss_ema=-6.0, loss_raw=-5.0, latent=False) == []


def test_flow_matching_without_the_velocity_network_is_refused_in_one_line(tmp_path):
    code, out, err = run_app("train", "sde=rectified_flow", "loss=flow_matching", "train.steps=2", "hydra.run.dir=run", cwd=tmp_path)
    assert code == 2 and err.count("\n") == 1 and "add model=mlp_velocity" in err, err
    assert not (tmp_path / "run").exists()


def test_the_held_out_nll_is_priced_before_it_runs_and_image_samples_are_saved_clipped(tmp_path, monkeypatch):
    """With the threshold at 0 s the estimate is always printed: the pilot's NFE and the time, before
    the evaluation's own result; the digits' samples.npz holds clipped samples and the raw values."""
    import numpy as np

    from sde_diffusion.tasks import score as train

    monkeypatch.setattr(train, "COST_SHOWN", 0.0)
    code, out, err = run_app(
        "train", "data=digits", "model=unet", "model.net.channels=8", "train.steps=2", "eval_points=40", "n_samples=16",
        "sampler=ddim", "sampler.grid.n_steps=3", "progress=false", "hydra.run.dir=run", cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    priced = [i for i, line in enumerate(lines) if "held-out NLL on 40 points next, about" in line]
    assert len(priced) == 1 and "8-point solve took" in lines[priced[0]] and "eval_points=0 skips it" in lines[priced[0]]
    saved = np.load(tmp_path / "run" / "samples.npz")
    test = _test_data(tmp_path / "run")
    assert saved["samples"].min() >= test.min() and saved["samples"].max() <= test.max()
    np.testing.assert_array_equal(np.clip(saved["samples_unclipped"], test.min(), test.max()), saved["samples"])


def _test_data(run_dir):
    import sde_diffusion as sd

    return sd.load_run(run_dir, "cpu").data.test.numpy()
