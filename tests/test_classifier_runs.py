"""Classifier guidance through the apps: ``sde-train task=classifier`` writes a run like any other
(checkpoint, summary with held-out accuracy per noise level, accuracy.png), and ``sde-sample
classifier_dir=... classifier_scale=... class_label=...`` guides a score run with it; mismatches
are refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.losses.classification import NOISE_LEVELS, noisy_accuracy


def _cli(module: str, *args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A small MLP classifier and an unconditional MLP score model, both on the digits with VP."""
    root = tmp_path_factory.mktemp("guidance")
    common = ["data=digits", "train.progress=false", "train.lr=2e-3", "train.warmup_steps=10"]
    proc = _cli("sde_diffusion.cli.train", "task=classifier", "train.steps=150", *common, f"hydra.run.dir={root / 'clf'}", cwd=root)
    assert proc.returncode == 0, proc.stderr
    proc = _cli(
        "sde_diffusion.cli.train", "train.steps=40", "n_samples=20", "eval_points=0", *common, f"hydra.run.dir={root / 'score'}", cwd=root
    )
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.mark.slow
def test_a_classifier_run_reports_accuracy_per_noise_level(runs):
    summary = json.loads((runs / "clf" / "summary.json").read_text())
    assert summary["task"] == "classifier" and summary["n_classes"] == 10 and (runs / "clf" / "accuracy.png").is_file()
    assert summary["held_out_accuracy_times"] == pytest.approx(list(NOISE_LEVELS))
    trained = sd.load_run(runs / "clf", "cpu")
    assert trained.score_model.is_classifier  # load_run rebuilds the classifier (n_classes=auto from the data)
    accuracy = noisy_accuracy(trained.score_model, trained.sde, trained.data.test, trained.data.test_labels, NOISE_LEVELS, seed=0)
    assert summary["held_out_accuracy"] == pytest.approx(accuracy.tolist())
    first, last = summary["held_out_accuracy"][0], summary["held_out_accuracy"][-1]
    assert first > 0.6 and abs(last - 0.1) < 0.1  # it learned the digits, and at t = T nothing is left to classify


@pytest.mark.slow
def test_sde_sample_guides_with_the_classifier(runs, tmp_path):
    """classifier_scale=0 gives the unguided samples exactly; a positive scale changes them, and the
    summary names the classifier and its scale."""
    outs = {}
    for scale in (0, 3):
        proc = _cli(
            "sde_diffusion.cli.sample", f"run_dir={runs / 'score'}", f"classifier_dir={runs / 'clf'}", f"classifier_scale={scale}",
            "class_label=3", "n_samples=16", "sampler=ddim", "sampler.n_steps=8", "progress=false", f"hydra.run.dir={tmp_path / str(scale)}",
            cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert f"class 3, classifier guidance {scale}" in proc.stdout
        outs[scale] = torch.from_numpy(np.load(tmp_path / str(scale) / "samples.npz")["samples_unclipped"])
        summary = json.loads((tmp_path / str(scale) / "sample_summary.json").read_text())
        assert summary["classifier_scale"] == scale and summary["classifier_dir"] == str(runs / "clf")
    proc = _cli(
        "sde_diffusion.cli.sample", f"run_dir={runs / 'score'}", "n_samples=16", "sampler=ddim", "sampler.n_steps=8", "progress=false",
        f"hydra.run.dir={tmp_path / 'plain'}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    plain = torch.from_numpy(np.load(tmp_path / "plain" / "samples.npz")["samples_unclipped"])
    assert torch.equal(outs[0], plain) and not torch.allclose(outs[3], plain)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["classifier_dir={score}", "class_label=3"], "holds a score model, not a classifier"),
        (["classifier_dir={clf}"], "set class_label"),
        (["classifier_dir={clf}", "class_label=12"], "class_label must be an integer in 0..9"),
        (["classifier_dir={clf}", "class_label=3", "classifier_scale=-1"], "classifier_scale"),
    ],
)
def test_sde_sample_refuses_a_guidance_that_cannot_work(runs, tmp_path, args, words):
    args = [a.format(score=runs / "score", clf=runs / "clf") for a in args]
    proc = _cli("sde_diffusion.cli.sample", f"run_dir={runs / 'score'}", *args, "n_samples=4", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode != 0 and words in proc.stderr, proc.stderr


@pytest.mark.slow
def test_a_classifier_on_another_sde_is_refused(runs, tmp_path):
    proc = _cli(
        "sde_diffusion.cli.train", "task=classifier", "sde=ve", "data=digits", "train.steps=2", "train.progress=false",
        f"hydra.run.dir={tmp_path / 'clf_ve'}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = _cli(
        "sde_diffusion.cli.sample", f"run_dir={runs / 'score'}", f"classifier_dir={tmp_path / 'clf_ve'}", "class_label=1", "n_samples=4",
        f"hydra.run.dir={tmp_path / 's'}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode != 0 and "train the classifier with the score model's sde" in proc.stderr


def test_task_classifier_without_labels_is_refused_before_training(tmp_path):
    proc = _cli("sde_diffusion.cli.train", "task=classifier", "train.steps=2", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert proc.returncode != 0 and "labelled data" in proc.stderr and not (tmp_path / "r" / "checkpoints").exists()
