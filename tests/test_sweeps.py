"""Sweeps: Hydra multirun with the basic and joblib launchers, the Slurm config, sde-summarize."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess

import pytest
from hydra import compose, initialize_config_module

from sde_diffusion.cli.summarize import collect_runs, summarize

TINY = [
    "train.steps=10",
    "train.log_every=5",
    "train.progress=false",
    "model.net.hidden_dim=16",
    "model.net.n_layers=1",
    "data.n_train=500",
    "data.n_test=100",
    "n_samples=50",
    "sampler.grid.n_steps=5",
    "eval_points=20",
]


def _run(exe, args, cwd):
    path = shutil.which(exe)
    assert path, f"{exe} is not installed: pip install -e ."
    return subprocess.run([path, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_two_by_two_multirun_and_its_summary(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _run("sde-train", ["-m", *TINY, "sde=vp,subvp", "seed=0,1", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(list(sweep.glob("*/summary.json"))) == 4

    proc = _run("sde-summarize", [str(sweep), "--metric", "held_out_loss_ema", "--by", "sde"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert sorted((r["sde"], r["seed"]) for r in rows) == [("subvp", "0"), ("subvp", "1"), ("vp", "0"), ("vp", "1")]
    assert all(float(r["held_out_loss_ema"]) > 0 and r["steps"] == "10" for r in rows)
    assert (sweep / "summary.md").read_text().count("\n| ") == 5  # header and four rows
    assert (sweep / "summary_held_out_loss_ema_by_sde.png").stat().st_size > 0
    assert "train.steps" not in rows[0]  # an override shared by every run is left out of the table


def test_joblib_launcher_runs_a_two_job_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}"]
    proc = _run("sde-train", args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Joblib" in proc.stdout + proc.stderr
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert len(summaries) == 2 and {s["steps"] for s in summaries} == {10}


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_module(config_module="sde_diffusion.conf", version_base=None):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.timeout_min == 240


def test_summary_of_an_empty_directory_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no runs below"):
        summarize(tmp_path)
    proc = _run("sde-summarize", [str(tmp_path)], tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("sde-summarize: error: no runs below")


def test_collect_runs_reads_overrides_summary_and_last_eval(tmp_path):
    run = tmp_path / "0"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- sde=ve\n- +extra=3\n")
    (run / "summary.json").write_text(json.dumps({"steps": 5, "held_out_loss_ema": 1.5, "nested": {"x": 1}}))
    (run / "eval.json").write_text(json.dumps([{"nll_nats_per_dim": 9.0}, {"nll_nats_per_dim": 2.0}]))
    (row,) = collect_runs(tmp_path)
    assert row == {
        "run": "0", "sde": "ve", "extra": "3", "steps": 5, "held_out_loss_ema": 1.5, "eval.nll_nats_per_dim": 2.0,
        "_overrides": {"sde", "extra"},
    }
