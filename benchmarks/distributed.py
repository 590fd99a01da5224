"""Throughput of one process against two (torchrun, DDP over gloo) on this machine, for training and
for the sharded probability-flow likelihood of `sde-eval`.

Training: `sde-train` in a subprocess for
  - 1 process x 1 thread,
  - 1 process x 2 threads (what a single job gets from two cores),
  - 2 processes x 1 thread (`torchrun --nproc_per_node=2`, DDP, the global batch split in two),
on two models: the default MLP (batch 256, 2-D toy data) and the digits U-Net (batch 128, 8x8
images). Samples/s is the steady-state rate between the first and last metrics lines (start-up and
the end-of-run sampling excluded). Configurations are interleaved in rounds so that machine noise
hits all alike; the table gives medians over rounds.

Evaluation: `sde-eval` on a trained MLP run (exact divergence, dopri5 at 1e-5) for the same three
layouts; seconds are the evaluation's own timer (model loading excluded), and the speed-up is
1-process-1-thread time over 2-process time. The NLL of every layout is printed too: sharding must not
change it.

Writes benchmarks/results/distributed.{json,md}.

    python benchmarks/distributed.py            # full (about 15 minutes)
    python benchmarks/distributed.py --quick    # smoke run (about 3 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"

LAYOUTS = {  # name -> (processes, threads per process)
    "1 proc x 1 thread": (1, 1),
    "1 proc x 2 threads": (1, 2),
    "2 procs x 1 thread": (2, 1),
}

MODELS = {
    "mlp (default, batch 256)": ["train.batch_size=256"],
    "unet digits (batch 128)": ["model=unet", "data=digits", "train.batch_size=128", "train.lr=5e-4"],
}

QUIET = ["train.progress=false", "n_samples=10", "sampler.grid.n_steps=5", "eval_points=0", "train.warmup_steps=10"]


def _exe(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"{name} is not on PATH: pip install -e . (sde-*) and torch (torchrun) first")
    return path


def _launch(prog: str, args: list[str], layout: str, cwd: Path) -> subprocess.CompletedProcess:
    procs, threads = LAYOUTS[layout]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if procs == 1:
        cmd = [_exe(prog), *args]
    else:
        cmd = [_exe("torchrun"), "--standalone", f"--nproc_per_node={procs}", "--no-python", prog, *args]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return done


def train_rate(model: str, layout: str, steps: int, log_every: int, tmp: Path) -> float:
    """Steady-state training samples/s of one `sde-train` run."""
    run = tmp / f"train-{len(list(tmp.iterdir()))}"
    batch = int(next(a for a in MODELS[model] if a.startswith("train.batch_size=")).split("=")[1])
    _launch("sde-train", [*MODELS[model], *QUIET, f"train.steps={steps}", f"train.log_every={log_every}",
                          f"train.checkpoint_every={steps}", f"hydra.run.dir={run}"], layout, tmp)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = lines[0], lines[-1]
    return (last["step"] - first["step"]) * batch / (last["elapsed_sec"] - first["elapsed_sec"])


def eval_once(run_dir: Path, layout: str, n_points: int, batch: int, tmp: Path) -> dict:
    out = tmp / f"eval-{len(list(tmp.iterdir()))}"
    _launch("sde-eval", [f"run_dir={run_dir}", f"n_points={n_points}", f"batch_size={batch}", "divergence=exact",
                         "progress=false", f"hydra.run.dir={out}"], layout, tmp)
    return json.loads((out / "eval.json").read_text())[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer steps, points and rounds")
    args = parser.parse_args()
    rounds = 1 if args.quick else 3
    steps = {"mlp (default, batch 256)": (300, 50) if args.quick else (1500, 250),
             "unet digits (batch 128)": (20, 5) if args.quick else (90, 15)}
    n_points, eval_batch = (400, 100) if args.quick else (2000, 250)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        train = {m: {lay: [] for lay in LAYOUTS} for m in MODELS}
        for r in range(rounds):
            for m in MODELS:
                for lay in LAYOUTS:
                    rate = train_rate(m, lay, *steps[m], tmp)
                    train[m][lay].append(rate)
                    print(f"round {r + 1}/{rounds}  train  {m:26s} {lay:20s} {rate:9.1f} samples/s", flush=True)

        # a trained MLP to evaluate (its weights matter little for speed but keep the ODE realistic)
        run_dir = tmp / "to-evaluate"
        _launch("sde-train", [*QUIET, "train.steps=2000", "train.checkpoint_every=2000", "data.n_test=5000",
                              f"hydra.run.dir={run_dir}"], "1 proc x 2 threads", tmp)
        evals = {lay: [] for lay in LAYOUTS}
        for r in range(rounds):
            for lay in LAYOUTS:
                rec = eval_once(run_dir, lay, n_points, eval_batch, tmp)
                evals[lay].append(rec)
                print(f"round {r + 1}/{rounds}  eval   {lay:20s} {rec['seconds']:7.1f} s  nll {rec['nll_nats_per_dim']:.6f}", flush=True)

    train_med = {m: {lay: statistics.median(v) for lay, v in d.items()} for m, d in train.items()}
    eval_sec = {lay: statistics.median(r["seconds"] for r in recs) for lay, recs in evals.items()}
    eval_nll = {lay: recs[0]["nll_nats_per_dim"] for lay, recs in evals.items()}
    result = {
        "quick": args.quick,
        "rounds": rounds,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "train_samples_per_sec": train_med,
        "train_rounds": train,
        "train_speedup_2proc_vs_1proc1thread": {m: d["2 procs x 1 thread"] / d["1 proc x 1 thread"] for m, d in train_med.items()},
        "train_speedup_2proc_vs_1proc2threads": {m: d["2 procs x 1 thread"] / d["1 proc x 2 threads"] for m, d in train_med.items()},
        "eval_points": n_points,
        "eval_batch_size": eval_batch,
        "eval_seconds": eval_sec,
        "eval_nll_nats_per_dim": eval_nll,
        "eval_speedup_2proc_vs_1proc1thread": eval_sec["1 proc x 1 thread"] / eval_sec["2 procs x 1 thread"],
        "eval_speedup_2proc_vs_1proc2threads": eval_sec["1 proc x 2 threads"] / eval_sec["2 procs x 1 thread"],
    }

    lines = ["# One process against two (torchrun, DDP over gloo)", "",
             f"torch {torch.__version__}, {os.cpu_count()} CPUs, medians over {rounds} interleaved round(s)"
             + (" (quick run)" if args.quick else "") + ".", "",
             "## Training throughput (samples/s, steady state)", "",
             "| model | " + " | ".join(LAYOUTS) + " | 2 procs / 1x1 | 2 procs / 1x2 |",
             "|---|" + "---|" * (len(LAYOUTS) + 2)]
    for m, d in train_med.items():
        lines.append(f"| {m} | " + " | ".join(f"{d[lay]:.0f}" for lay in LAYOUTS)
                     + f" | {result['train_speedup_2proc_vs_1proc1thread'][m]:.2f} | {result['train_speedup_2proc_vs_1proc2threads'][m]:.2f} |")
    lines += ["", f"## Sharded evaluation (sde-eval, {n_points} points in batches of {eval_batch}, exact divergence, dopri5 1e-5)", "",
              "| layout | seconds | NLL (nats/dim) |", "|---|---|---|"]
    for lay in LAYOUTS:
        lines.append(f"| {lay} | {eval_sec[lay]:.1f} | {eval_nll[lay]:.6f} |")
    lines += ["", f"Speed-up of 2 processes: {result['eval_speedup_2proc_vs_1proc1thread']:.2f}x over 1 process x 1 thread, "
              f"{result['eval_speedup_2proc_vs_1proc2threads']:.2f}x over 1 process x 2 threads."]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    stem = "distributed_quick" if args.quick else "distributed"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(text)


if __name__ == "__main__":
    main()
