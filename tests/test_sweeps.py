"""Sweeps: Hydra multirun with the basic and joblib launchers, the Slurm config, sde-summarize."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess

import matplotlib.pyplot as plt
import pytest
from hydra import compose, initialize_config_module

from sde_diffusion.cli.summarize import DEFAULT_METRICS, collect_runs, main, metric_figure, summarize

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


@pytest.mark.slow
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


@pytest.mark.slow
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
        "run": "0",
        "sde": "ve",
        "extra": "3",
        "steps": 5,
        "held_out_loss_ema": 1.5,
        "eval.nll_nats_per_dim": 2.0,
        "_overrides": {"sde", "extra"},
    }


def _fake_sweep(root, sdes=("vp", "subvp", "ve"), seeds=(0, 1), extra_metrics=None):
    """Run directories ``root/<i>`` as sde-train leaves them: overrides (``sde``, ``seed`` and a shared
    ``train.steps``) and a summary.json with sde-train's keys; held_out_loss_ema = 1 + index of sde + seed / 10."""
    for i, (sde, seed) in enumerate((sde, seed) for sde in sdes for seed in seeds):
        run = root / str(i)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- sde={sde}\n- seed={seed}\n- train.steps=10\n")
        summary = {
            "steps": 10, "train_seconds": 1.5, "steps_per_sec": 6.7, "final_train_loss": 0.4,
            "held_out_loss_ema": 1.0 + sdes.index(sde) + seed / 10, "held_out_nll_nats_per_dim": 1.2,
            "held_out_nll_stderr": 0.01, "sampler": "euler_maruyama", "nfe": 100, "sample_seconds": 0.2,
            "sliced_w2_vs_held_out": 0.1, "n_samples": 50, "device": "cpu", "run_dir": str(run),
            **(extra_metrics or {}),
        }  # fmt: skip
        (run / "summary.json").write_text(json.dumps(summary))
    return root


def _header(text):
    return [c.strip() for c in text.splitlines()[0].strip("| ").split("|")]


def test_summary_shows_the_swept_overrides_and_main_metrics_and_the_csv_keeps_all(tmp_path, capsys):
    _fake_sweep(tmp_path)
    _, shown = summarize(tmp_path)
    expected = ["run", "sde", "seed", "steps", "held_out_loss_ema", "held_out_nll_nats_per_dim",
                "sliced_w2_vs_held_out", "nfe", "train_seconds"]  # fmt: skip
    assert shown == expected  # no held_out_bpd / eval.*: no run has them
    assert _header(capsys.readouterr().out) == expected
    assert _header((tmp_path / "summary.md").read_text().split("\n\n")[-1]) == expected
    with (tmp_path / "summary.csv").open() as f:
        csv_columns = next(csv.reader(f))
    assert {"steps_per_sec", "sampler", "device", "run_dir", "held_out_nll_stderr"} <= set(csv_columns)
    assert set(expected) < set(csv_columns) and "train.steps" not in csv_columns


def test_default_columns_include_bpd_and_eval_metrics_when_a_run_has_them(tmp_path):
    _fake_sweep(tmp_path, extra_metrics={"held_out_bpd": 3.1, "samples_outside_range": 0.0, "samples_max_abs_ratio": 0.9})
    (tmp_path / "0" / "eval.json").write_text(json.dumps([{"bound": "vlb", "nll_nats_per_dim": 2.0, "bpd": 2.9, "n_points": 9}]))
    _, shown = summarize(tmp_path)
    assert [c for c in shown if c in DEFAULT_METRICS] == list(DEFAULT_METRICS)
    assert "eval.n_points" not in shown


def test_columns_option_chooses_the_columns_in_order_and_all_shows_everything(tmp_path, capsys):
    _fake_sweep(tmp_path)
    main([str(tmp_path), "--columns", "held_out_loss_ema, sde,held_out_loss_ema"])
    assert _header(capsys.readouterr().out) == ["held_out_loss_ema", "sde"]
    main([str(tmp_path), "--columns", "all"])
    header = _header(capsys.readouterr().out)
    with (tmp_path / "summary.csv").open() as f:
        assert header == next(csv.reader(f))
    assert "device" in header and "sampler" in header


def test_unknown_column_is_a_one_line_error_listing_the_columns(tmp_path, capsys):
    _fake_sweep(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), "--columns", "sde,held_out_los"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sde-summarize: error: unknown column(s) held_out_los; choose from: run, sde")
    assert "held_out_loss_ema" in err and "--columns all" in err


def test_categorical_override_plots_means_per_category_without_a_connecting_line(tmp_path):
    rows = collect_runs(_fake_sweep(tmp_path))
    fig, ax = metric_figure(rows, "held_out_loss_ema", "sde")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["vp", "subvp", "ve"]  # sweep order, not sorted
    assert all(line.get_linestyle() == "None" or len(line.get_xdata()) < 2 for line in ax.get_lines())
    (errorbar,) = ax.containers
    means, _, _ = errorbar.lines
    assert list(means.get_ydata()) == pytest.approx([1.05, 2.05, 3.05])  # mean of seeds 0 and 1 per sde
    assert len(ax.collections[0].get_offsets()) == 6  # every run a point
    plt.close(fig)


def test_numeric_override_keeps_the_line_of_means_in_numeric_order(tmp_path):
    rows = collect_runs(_fake_sweep(tmp_path, seeds=(10, 2)))
    fig, ax = metric_figure(rows, "held_out_loss_ema", "seed")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "10"]
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "mean"]
    assert line.get_linestyle() == "-" and list(line.get_ydata()) == pytest.approx([2.2, 3.0])
    assert not ax.containers
    plt.close(fig)


def test_categorical_plot_is_written_by_the_command(tmp_path):
    _fake_sweep(tmp_path)
    main([str(tmp_path), "--metric", "held_out_loss_ema", "--by", "sde"])
    assert (tmp_path / "summary_held_out_loss_ema_by_sde.png").stat().st_size > 0
