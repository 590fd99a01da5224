"""Defaults that follow from the recipes benchmark (issue 24, item 6): ``sde=ve`` and ``sde=edm`` put the
network behind EDM's preconditioning; ``experiment=edm_toy`` is EDM's whole recipe; runs saved before
these defaults changed resume as they were trained."""

from __future__ import annotations

import json

import pytest
import torch
from apps import run_app, train_config
from omegaconf import OmegaConf

import sde_diffusion as sd
from sde_diffusion.app.runs import build_experiment
from sde_diffusion.cli import _resume
from sde_diffusion.training import load_checkpoint


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["sde=ve"], "edm"),
        (["sde=edm"], "edm"),
        (["sde=vp"], "none"),
        (["sde=subvp"], "none"),
        (["sde=rectified_flow", "model=mlp_velocity", "loss=flow_matching"], "none"),
        (["sde=ve", "model=mlp_velocity", "loss=flow_matching"], "none"),  # a velocity is no denoiser
        (["sde=ve", "model.preconditioning=none"], "none"),
        (["sde=edm", "experiment=digits"], "edm"),
        (["experiment=edm_toy"], "edm"),
    ],
)
def test_which_paths_precondition_by_default(overrides, expected):
    small = [] if "experiment=digits" in overrides else ["data.n_train=64", "data.n_test=16"]
    cfg = train_config(*overrides, *small)
    assert cfg.model.preconditioning == expected
    model = build_experiment(cfg).score_model
    assert isinstance(model, sd.EDMPreconditioning) == (expected == "edm")


def test_edm_toy_is_edms_recipe():
    cfg = train_config("experiment=edm_toy", "data.n_train=64", "data.n_test=16")
    exp = build_experiment(cfg)
    weighting = exp.loss_fn.keywords["weighting"]
    assert isinstance(exp.sde, sd.EDMSDE) and isinstance(weighting, sd.EDMWeighting)
    assert weighting.sigma_data == pytest.approx(float(exp.score_model.sigma_data))  # one sigma_data for both
    assert weighting.P_mean == pytest.approx(sd.losses.weighting.edm_P_mean(weighting.sigma_data))
    assert cfg.sampler.fn._target_ == "sde_diffusion.samplers.EDMStep"


def _fake_run(tmp_path, overrides: list[str], saved: dict):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(saved)))
    return run


@pytest.mark.parametrize(
    "saved, pins",
    [
        ({"model": {"preconditioning": "none"}}, ["model.preconditioning=none"]),
        ({"model": {}}, ["model.preconditioning=none"]),  # saved before the key existed
        ({"model": {"preconditioning": "edm"}, "loss": {"weighting": {"P_mean": -1.2}}}, ["model.preconditioning=edm", "loss.weighting.P_mean=-1.2"]),
        ({"model": {"preconditioning": "none"}, "loss": {"weighting": {"P_mean": None}}}, ["model.preconditioning=none"]),
    ],
)
def test_a_resume_pins_the_defaults_that_changed_to_the_saved_values(tmp_path, saved, pins):
    run = _fake_run(tmp_path, ["sde=ve", "loss=edm"], saved)
    argv = _resume.prepare("sde-train", [f"hydra.run.dir={run}", "train.resume=true"])
    assert argv[:2] == ["sde=ve", "loss=edm"] and argv[2 : 2 + len(pins)] == pins
    given = _resume.prepare("sde-train", [f"hydra.run.dir={run}", "train.resume=true", "model.preconditioning=edm"])
    assert "model.preconditioning=none" not in given  # what the command gives wins (and is checked later)
    composed = train_config(*[a for a in argv if not a.startswith(("hydra.", "train.resume"))])
    assert composed.model.preconditioning == pins[0].split("=")[1]


def test_a_ve_run_saved_before_the_default_changed_resumes_as_it_was_trained(tmp_path):
    """A run trained with ``sde=ve`` when that meant the raw network (its overrides say only
    ``sde=ve``) continues with the raw network; without the pin today's default would compose EDM's
    preconditioning and the resume would be refused (the model changed)."""
    run = tmp_path / "run"
    args = ["sde=ve", "model.net.hidden_dim=16", "model.net.n_layers=2", "data.n_train=256", "data.n_test=64", "n_samples=32"]
    args += ["eval_points=0", "sampler.grid.n_steps=5", "progress=false", f"hydra.run.dir={run}"]
    code, _, err = run_app("train", *args, "model.preconditioning=none", "train.steps=10", cwd=tmp_path)
    assert code == 0, err
    overrides = run / ".hydra" / "overrides.yaml"  # as the older version wrote it: sde=ve alone meant none
    overrides.write_text(OmegaConf.to_yaml(OmegaConf.create([a for a in OmegaConf.load(overrides) if a != "model.preconditioning=none"])))
    code, _, err = run_app("train", f"hydra.run.dir={run}", "train.resume=true", "train.steps=20", "progress=false", cwd=tmp_path)
    assert code == 0, err
    assert int(load_checkpoint(run / "checkpoints" / "last.pt")["step"]) == 20
    assert OmegaConf.load(run / ".hydra" / "config.yaml").model.preconditioning == "none"
    assert json.loads((run / "summary.json").read_text())["steps"] == 20
    assert torch.isfinite(torch.tensor(json.loads((run / "summary.json").read_text())["held_out_loss_ema"]))


def test_digits_edm_is_the_digits_with_edms_recipe():
    cfg = train_config("experiment=digits_edm")
    exp = build_experiment(cfg)
    assert isinstance(exp.score_model, sd.EDMPreconditioning) and exp.score_model.n_classes == 10
    assert isinstance(exp.sde, sd.VPSDE) and isinstance(exp.loss_fn.keywords["weighting"], sd.EDMWeighting)
    assert exp.options.steps == 3000 and exp.options.ema_decay == 0.999 and not exp.options.ema_warmup
