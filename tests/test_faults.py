"""Faults: a training process killed with SIGKILL at a random moment loses at most the steps since
its last checkpoint, never the checkpoint itself, and resumes to the uninterrupted result."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time

import torch

from sde_diffusion.training import load_checkpoint

ARGS = [
    "train.steps=400",
    "train.checkpoint_every=3",  # a checkpoint write every few steps: kills often land mid-write
    "train.log_every=1",
    "train.warmup_steps=5",
    "train.progress=false",
    "model.net.hidden_dim=16",
    "model.net.n_layers=1",
    "data.n_train=500",
    "data.n_test=100",
    "n_samples=20",
    "sampler.grid.n_steps=5",
    "eval_points=0",
]


def _exe():
    exe = shutil.which("sde-train")
    assert exe, "sde-train is not installed: pip install -e ."
    return exe


def _last_logged_step(metrics) -> int:
    if not metrics.exists():
        return 0
    lines = [line for line in metrics.read_text().splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])["step"] if lines else 0
    except json.JSONDecodeError:  # a line being written
        return json.loads(lines[-2])["step"] if len(lines) > 1 else 0


def test_sigkill_at_a_random_moment_then_resume_equals_uninterrupted(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = tmp_path / "full"
    proc = subprocess.run([_exe(), *ARGS, f"hydra.run.dir={full}"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr

    run = tmp_path / "killed"
    rng = random.Random(os.getpid())
    target = rng.randint(20, 300)  # kill once training has passed a random step
    child = subprocess.Popen([_exe(), *ARGS, f"hydra.run.dir={run}"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 300
    while _last_logged_step(run / "metrics.jsonl") < target and child.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    time.sleep(rng.uniform(0.0, 0.05))  # and a random fraction of a step later
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = _last_logged_step(run / "metrics.jsonl")

    # the checkpoint survives, verified, and is at most one checkpoint interval behind
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert killed_at - 3 <= ckpt["step"] <= killed_at + 1

    proc = subprocess.run(
        [_exe(), *ARGS, "train.resume=true", f"hydra.run.dir={run}"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stderr
    a = load_checkpoint(full / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 400
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 401))  # each step logged once, none lost from the record
