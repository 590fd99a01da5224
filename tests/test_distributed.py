"""torch.distributed on the CPU (gloo, 2 processes): DDP training equals one process with the same
global batch, sharded evaluation equals one process, and a dead rank stops the job cleanly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.training import load_checkpoint

TINY = [
    "train.batch_size=64",
    "train.log_every=5",
    "train.checkpoint_every=10",
    "train.warmup_steps=5",
    "train.progress=false",
    "model.net.hidden_dim=32",
    "model.net.n_layers=2",
    "data.n_train=1000",
    "data.n_test=200",
    "n_samples=50",
    "sampler.grid.n_steps=10",
    "eval_points=0",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _exe(name):
    path = shutil.which(name)
    assert path, f"{name} is not on PATH (pip install -e . installs sde-*; torch installs torchrun)"
    return path


def _torchrun(prog, args, cwd, **kw):
    cmd = [_exe("torchrun"), "--standalone", "--nproc_per_node=2", "--no-python", prog, *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=ENV, **kw)


def _single(prog, args, cwd):
    return subprocess.run([_exe(prog), *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=ENV)


def _assert_same_weights(a_dir: Path, b_dir: Path, atol: float = 1e-6):
    a, b = load_checkpoint(a_dir / "checkpoints" / "last.pt"), load_checkpoint(b_dir / "checkpoints" / "last.pt")
    assert a["step"] == b["step"]
    for part in ("model", "ema"):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=atol, msg=f"{part}.{key}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-process DDP run and the single-process run with the same global batch in 2 micro-batches."""
    root = tmp_path_factory.mktemp("ddp")
    ddp = _torchrun("sde-train", [*TINY, "train.steps=30", f"hydra.run.dir={root / 'ddp'}"], root)
    assert ddp.returncode == 0, ddp.stderr
    single = _single("sde-train", [*TINY, "train.steps=30", "train.grad_accumulation=2", f"hydra.run.dir={root / 'single'}"], root)
    assert single.returncode == 0, single.stderr
    return root, ddp


@pytest.mark.slow
def test_ddp_training_equals_one_process_with_the_same_global_batch(trained):
    root, ddp = trained
    _assert_same_weights(root / "ddp", root / "single")
    # only rank 0 wrote: one summary line, one metrics record per logging step, one .hydra
    assert ddp.stdout.count("sde-train: 30 steps") == 1
    steps = [json.loads(line)["step"] for line in (root / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20, 25, 30]
    losses = [json.loads(line)["loss"] for line in (root / "ddp" / "metrics.jsonl").read_text().splitlines()]
    single = [json.loads(line)["loss"] for line in (root / "single" / "metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(single, rel=1e-5)  # the logged loss is the mean over processes
    assert (root / "ddp" / ".hydra" / "config.yaml").exists()


@pytest.mark.slow
def test_streamed_ddp_training_equals_one_process(tmp_path):
    """train.data_on_device=false: every process gathers the same counter-based global batch from host
    memory (through loader workers) and trains its share of it; the result equals one process."""
    stream = [*TINY, "train.steps=12", "train.data_on_device=false", "train.data_workers=1"]
    ddp = _torchrun("sde-train", [*stream, f"hydra.run.dir={tmp_path / 'ddp'}"], tmp_path)
    assert ddp.returncode == 0, ddp.stderr
    single = _single("sde-train", [*stream, "train.grad_accumulation=2", f"hydra.run.dir={tmp_path / 'single'}"], tmp_path)
    assert single.returncode == 0, single.stderr
    _assert_same_weights(tmp_path / "ddp", tmp_path / "single")


@pytest.mark.slow
def test_sharded_evaluation_equals_one_process(trained):
    """110 points in batches of 40: rank 0 solves two batches, rank 1 one, each adaptive solve with
    its own step count; the results are gathered once at the end, so nothing waits mid-solve."""
    root, _ = trained
    args = [f"run_dir={root / 'ddp'}", "n_points=110", "batch_size=40", "progress=false", "divergence=hutchinson", "n_probes=2"]
    sharded = _torchrun("sde-eval", [*args, f"hydra.run.dir={root / 'eval2'}"], root)
    assert sharded.returncode == 0, sharded.stderr
    single = _single("sde-eval", [*args, f"hydra.run.dir={root / 'eval1'}"], root)
    assert single.returncode == 0, single.stderr
    records = json.loads((root / "ddp" / "eval.json").read_text())
    assert [r["processes"] for r in records] == [2, 1]
    for key in ("nll_nats_per_dim", "nll_stderr", "nfe_total", "n_points", "n_solves"):
        assert records[0][key] == pytest.approx(records[1][key], rel=1e-9), key
    assert sharded.stdout.count("sde-eval: NLL") == 1 and records[0]["n_solves"] == 3


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _rank_of(pid: int) -> int | None:
    try:
        env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


@pytest.mark.slow
def test_a_dead_rank_stops_the_job_and_resume_completes_it(tmp_path):
    run = tmp_path / "run"
    args = [*TINY, "train.steps=300", "train.log_every=1", f"hydra.run.dir={run}"]
    cmd = [_exe("torchrun"), "--standalone", "--nproc_per_node=2", "--no-python", "sde-train", *args]
    job = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and job.poll() is None:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if len(lines) >= 40:
            break
        time.sleep(0.01)
    workers = {_rank_of(p): p for p in _children(job.pid)}
    assert 1 in workers, f"no rank-1 worker among {workers}"
    os.kill(workers[1], signal.SIGKILL)
    out, err = job.communicate(timeout=300)
    assert job.returncode != 0, "the job went on without rank 1"
    assert "exitcode" in err and "-9" in err  # torchrun names the failed rank and its signal

    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")  # intact, written by rank 0
    assert 0 < ckpt["step"] < 300
    resumed = _torchrun("sde-train", [*args, "train.resume=true"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    single = _single("sde-train", [*TINY, "train.steps=300", "train.log_every=1", "train.grad_accumulation=2", f"hydra.run.dir={tmp_path / 'single'}"], tmp_path)
    assert single.returncode == 0, single.stderr
    _assert_same_weights(run, tmp_path / "single", atol=1e-5)


def test_batch_must_split_into_micro_batches():
    sde = sd.VPSDE()
    model = sd.EpsilonParameterization(sd.TimeMLP((2,), hidden_dim=8, n_layers=1), sde)
    with pytest.raises(ValueError, match=r"batch_size \(64\) must be divisible .* 3"):
        sd.Trainer(model, sde, torch.randn(100, 2), sd.TrainOptions(batch_size=64, grad_accumulation=3, progress=False))


@pytest.mark.slow
def test_a_finished_rank_waits_at_shutdown_for_rank_0s_work(tmp_path):
    """shutdown(wait=True) meets every rank before leaving the group: rank 1 finishes at once, rank 0
    works 3 s alone (its evaluation after training) and both leave together, with exit code 0.
    Leaving early made gloo abort rank 1 in about one job in five."""
    script = tmp_path / "meet.py"
    script.write_text(
        "import json, sys, time\n"
        "from sde_diffusion import distributed\n"
        "ctx = distributed.init_distributed('cpu')\n"
        "if ctx.is_main:\n"
        "    time.sleep(3)\n"
        "distributed.shutdown(ctx, wait=True)\n"
        "open(f'left{ctx.rank}.json', 'w').write(json.dumps(time.time()))\n"
    )  # a file per rank: the two ranks' stdout lines can interleave
    start = time.time()
    proc = _torchrun(_exe("python"), [str(script)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    left = {rank: json.loads((tmp_path / f"left{rank}.json").read_text()) for rank in (0, 1)}
    assert left[1] - start >= 3 and abs(left[1] - left[0]) < 1.5, left
