"""Training steps/s against torch's thread count, alone and beside a competing CPU-bound process.

Why: PyTorch's CPU kernels run on an OpenMP pool whose idle threads spin-wait (busy-poll) for the
next parallel region instead of sleeping. With torch's default of one thread per core, a training
process on a 2-core machine keeps both cores busy even between kernels; when another CPU-bound
process shares the machine, each parallel region waits for the thread that the OS has descheduled,
and two such processes with 2 threads each slow each other far more than the 2x that sharing the
cores alone would cost (issue 15: the default model fell from ~190 to 3-52 steps/s; with one thread
per process it kept 94-193). The apps' `threads` key calls torch.set_num_threads(threads) at start;
this benchmark measures what each setting gives.

What is measured: optimiser steps/s of sde_diffusion.Trainer for each `--threads-list` setting
(default 1,2) and each situation
  - alone:       nothing else of ours running;
  - + busy loop: beside a single-threaded pure-Python busy loop (a compile job, a data-prep script),
                 started before the measured process and killed after it;
  - + twin:      beside a second identical training process with the same threads setting (two
                 users' runs side by side); both are measured, their timed parts start together;
for two models:
  - mlp:  the default `sde-train` model: TimeMLP 128x4 (Gaussian Fourier time embedding 64, scale
          16), eps parameterization, VP SDE, checkerboard data, batch 256 (conf/model/mlp.yaml,
          conf/train/default.yaml);
  - unet: the class-conditional digits U-Net of `experiment=digits` (conf/model/unet.yaml,
          conf/experiment/digits.yaml): 8x8 digits, batch 128, label dropout 0.1.
Each measurement is a fresh `python benchmarks/threads.py --worker ...` process that calls
torch.set_num_threads(n) before building anything, trains a warm-up, then times a fixed number of
steps (steps/s over the timed part only; the timed part also stops at a wall-clock cap so that a
heavily slowed cell cannot stall the run, and then reports the steps it did). Every cell is repeated
`--repeats` times, the order of cells rotated every round; the table gives the median [min-max] and
the ratio of the median to the same model and threads alone. Writes benchmarks/results/threads.{json,md}
(or --out DIR).

    python benchmarks/threads.py                              # full: about 5-6 minutes on 2 cores
    python benchmarks/threads.py --quick --out /tmp/threads   # smoke run (about 1 minute)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch  # nothing else is imported before a worker sets its thread count

RESULTS = Path(__file__).resolve().parent / "results"
SITUATIONS = {"alone": "alone", "busy": "+ busy loop", "twin": "+ twin run"}
# per model: warm-up steps, timed steps, chunk (steps between wall-clock checks); the caps in seconds
SETTINGS = {
    "full": {
        "mlp": {"warmup": 50, "steps": 400, "chunk": 5, "warmup_cap": 1.5, "cap": 2.5},
        "unet": {"warmup": 2, "steps": 10, "chunk": 1, "warmup_cap": 2.0, "cap": 3.5},
    },
    "quick": {
        "mlp": {"warmup": 10, "steps": 50, "chunk": 5, "warmup_cap": 0.5, "cap": 0.7},
        "unet": {"warmup": 1, "steps": 2, "chunk": 1, "warmup_cap": 1.0, "cap": 1.0},
    },
}
# the competitor: one pure-Python thread, capped at 10 minutes in case this script dies first
BUSY_LOOP = "import time\nend = time.monotonic() + 600\nwhile time.monotonic() < end:\n    pass\n"
HOLD_SECONDS = 120.0  # after its timed part a worker keeps training (load for its twin) until killed, at most this long
ENV_KEYS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


# ----------------------------------------------------------------------------------- worker
def _trainer(model: str):
    import sde_diffusion as sd

    sde = sd.VPSDE()
    torch.manual_seed(0)
    embedding = sd.GaussianFourierEmbedding(64, 16.0)
    if model == "mlp":
        data = sd.toy_dataset("checkerboard", n_train=50_000, n_test=100, seed=0)
        net = sd.TimeMLP(tuple(data.train.shape[1:]), hidden_dim=128, n_layers=4, time_embedding=embedding)
        opts = sd.TrainOptions(batch_size=256, lr=1e-3, warmup_steps=500, progress=False)
    else:
        data = sd.digits_dataset(n_test=297, seed=0)
        net = sd.UNet(tuple(data.train.shape[1:]), channels=32, channel_mult=(1, 2, 2), n_res_blocks=1,
                      attention_resolutions=(4,), dropout=0.1, n_classes=10, time_embedding=embedding)
        opts = sd.TrainOptions(batch_size=128, lr=5e-4, warmup_steps=200, label_dropout=0.1, progress=False)
    return sd.Trainer(sd.EpsilonParameterization(net, sde), sde, data.train, opts, seed=0, labels=data.train_labels)


def _train(trainer, steps: int, cap: float, chunk: int) -> tuple[int, float]:
    """Up to ``steps`` Trainer.fit() steps, stopping at the first chunk boundary after ``cap`` seconds;
    returns (steps done, seconds)."""
    done, start = 0, time.perf_counter()
    while done < steps and time.perf_counter() - start < cap:
        n = min(chunk, steps - done)
        trainer.options = dataclasses.replace(trainer.options, steps=trainer.step + n)
        trainer.fit()
        done += n
    return done, time.perf_counter() - start


def worker(args) -> None:
    """Warm up, print a ready line, wait for a line on stdin, time the steps, print the result, then
    keep training until killed (so that a twin run stays loaded until its own timed part ends)."""
    torch.set_num_threads(args.threads)
    trainer = _trainer(args.model)
    cfg = SETTINGS["quick" if args.quick else "full"][args.model]
    _train(trainer, cfg["warmup"], cfg["warmup_cap"], cfg["chunk"])
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    steps, seconds = _train(trainer, cfg["steps"], cfg["cap"], cfg["chunk"])
    print(json.dumps({"model": args.model, "threads": torch.get_num_threads(), "steps": steps,
                      "seconds": seconds, "steps_per_sec": steps / seconds}), flush=True)
    _train(trainer, 10**9, HOLD_SECONDS, cfg["chunk"])


# ----------------------------------------------------------------------------------- driver
def _spawn_worker(model: str, threads: str, quick: bool) -> subprocess.Popen:
    """``threads`` is a count, or a count and ``p`` (``2p``): that many threads with OpenMP's idle
    threads sleeping instead of spinning (OMP_WAIT_POLICY=PASSIVE, read when torch loads)."""
    cmd = [sys.executable, __file__, "--worker", "--model", model, "--threads", threads.rstrip("p")] + (["--quick"] if quick else [])
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"} if threads.endswith("p") else None
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def _read(proc: subprocess.Popen) -> dict:
    """The next JSON line a worker prints (other lines are skipped)."""
    while True:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"a worker exited early (status {proc.wait()}); see its error above")
        if line.startswith("{"):
            return json.loads(line)


def measure(model: str, threads: str, situation: str, quick: bool) -> list[float]:
    """Steps/s of the measured run (both runs for ``twin``) in one situation."""
    procs: list[subprocess.Popen] = []
    try:
        if situation == "busy":  # started first: it is running through the worker's start and warm-up
            procs.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL))
        workers = [_spawn_worker(model, threads, quick) for _ in range(2 if situation == "twin" else 1)]
        procs += workers
        for w in workers:
            _read(w)  # ready: warmed up
        for w in workers:  # the timed parts start together
            w.stdin.write("go\n")
            w.stdin.flush()
        return [_read(w)["steps_per_sec"] for w in workers]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
            for stream in (p.stdin, p.stdout):
                if stream:
                    stream.close()


def _cell(rates: list[float]) -> str:
    return f"{statistics.median(rates):.1f} [{min(rates):.1f}-{max(rates):.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (1 repeat, few steps)")
    parser.add_argument("--threads-list", default="1,2,2p",
                        help="torch thread counts to compare, comma-separated; 2p: 2 threads with OMP_WAIT_POLICY=PASSIVE")
    parser.add_argument("--repeats", type=int, default=None, help="rounds over all cells (default 3; 1 with --quick)")
    parser.add_argument("--models", default="mlp,unet", help="comma-separated subset of mlp,unet")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for threads.{json,md} (default benchmarks/results; with --quick a temporary folder)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=("mlp", "unet"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    threads_list = args.threads_list.split(",")
    models = args.models.split(",")
    if not set(models) <= {"mlp", "unet"} or not all(n.rstrip("p").isdigit() and int(n.rstrip("p")) >= 1 for n in threads_list):
        raise SystemExit("--models takes mlp and/or unet; --threads-list positive integers, each optionally followed by p")
    repeats = args.repeats or (1 if args.quick else 3)
    out = args.out or (Path(tempfile.gettempdir()) / "threads_quick" if args.quick else RESULTS)
    cells = [(m, n, s) for m in models for n in threads_list for s in SITUATIONS]
    rates: dict[tuple, list[float]] = {c: [] for c in cells}
    start = time.perf_counter()
    for r in range(repeats):
        k = r % len(cells)
        for cell in cells[k:] + cells[:k]:  # rotate the order every round
            got = measure(*cell, args.quick)
            rates[cell] += got
            print(f"round {r + 1}/{repeats}  {cell[0]:4s} threads={cell[1]} {SITUATIONS[cell[2]]:12s} "
                  + "  ".join(f"{v:7.1f}" for v in got) + " steps/s", file=sys.stderr, flush=True)
    wall = time.perf_counter() - start

    env = {k: os.environ.get(k) for k in ENV_KEYS}
    rows = []
    for m, n, s in cells:
        alone = statistics.median(rates[(m, n, "alone")])
        med = statistics.median(rates[(m, n, s)])
        rows.append({"model": m, "threads": n, "situation": s, "steps_per_sec": rates[(m, n, s)],
                     "median": med, "min": min(rates[(m, n, s)]), "max": max(rates[(m, n, s)]), "ratio_to_alone": med / alone})
    header = (f"torch {torch.__version__}, os.cpu_count() {os.cpu_count()}, torch default threads {torch.get_num_threads()}, "
              f"{platform.processor() or platform.machine()}; "
              + ", ".join(f"{k}={'unset' if v is None else v}" for k, v in env.items() if k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")))
    settings = SETTINGS["quick" if args.quick else "full"]
    table = [f"{'model':5s} {'threads':>7s}  {'situation':12s} {'steps/s median [min-max]':>26s} {'ratio to alone':>15s}"]
    table += [f"{r['model']:5s} {r['threads']:>7s}  {SITUATIONS[r['situation']]:12s} {_cell(r['steps_per_sec']):>26s} "
              f"{r['ratio_to_alone']:15.2f}" for r in rows]
    print(header)
    print("\n".join(table))
    print(f"{repeats} round(s), {wall:.0f} s wall")

    result = {
        "quick": args.quick,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_default_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "env": env,
        "threads_list": threads_list,
        "repeats": repeats,
        "settings": {m: settings[m] for m in models},
        "wall_seconds": wall,
        "rows": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "threads.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Training steps/s against torch threads, alone and beside a competing process",
        "",
        header + ".",
        "Each measurement is a fresh process (torch.set_num_threads first), warm-up then timed steps "
        f"(mlp: {settings['mlp']['steps']} steps, unet: {settings['unet']['steps']} steps, or fewer at a wall-clock cap of "
        f"{settings['mlp']['cap']:g} / {settings['unet']['cap']:g} s); {repeats} round(s), order rotated; "
        "median [min-max]. Threads '2p': 2 threads with OMP_WAIT_POLICY=PASSIVE. '+ busy loop': a single-threaded pure-Python loop running throughout; "
        "'+ twin run': a second identical training run with the same threads, both measured (their timed parts start together). "
        "mlp: TimeMLP 128x4, batch 256, VP SDE, checkerboard (the `sde-train` default); unet: the class-conditional digits U-Net, batch 128.",
        "",
        "| model | threads | situation | steps/s median [min-max] | ratio to alone |",
        "|---|---|---|---|---|",
        *[f"| {r['model']} | {r['threads']} | {SITUATIONS[r['situation']]} | {_cell(r['steps_per_sec'])} | {r['ratio_to_alone']:.2f} |" for r in rows],
        "",
    ]
    (out / "threads.md").write_text("\n".join(lines))
    print(f"wrote {out / 'threads.json'} and {out / 'threads.md'}")


if __name__ == "__main__":
    main()
