"""Probability-flow likelihood: accuracy, NFE and wall time of each backend; where the time goes.

Part 1, accuracy. Gaussian mixtures (tests/analytic.py ``mixture``) in 2, 16 and 64 dimensions
with their exact scores, so every error is measured against closed forms:

- ``err_solver``: mean over points of ``|logp' - log p_eps(x)| / D`` in nats/dim, where ``logp'`` is
  the returned ``logp`` with the prior swapped for the true marginal ``p_T`` at the latent. This is
  the error of the solve and of the divergence estimate; the targets apply to it.
- ``err_p0``: mean ``|logp - log p_0(x)| / D``: what a user sees, including the prior mismatch
  ``prior_gap = mean |log prior(x_T) - log p_T(x_T)| / D`` of the SDE itself (not a solver error).

Part 2, speed: torchdiffeq against scipy at rtol = atol = 1e-5 (the issue's target: torchdiffeq at
least 3x faster), exact divergence, for the analytic mixture score and a random TimeMLP (128 x 4,
the default network), float64 and float32, batches of 32 to 5000 points, 1 and 2 threads. Each row
also splits the time: ``rhs_ms`` is one evaluation of the augmented right-hand side (score,
drift, divergence; the same code for both backends, timed alone on the batch at t = 0.5, best of 5), so
``(seconds - nfe * rhs_ms) / nfe`` is what each integrator spends per evaluation on itself. The two
backends use the same Dormand-Prince tableau at the same tolerance; ``dlogp`` is their disagreement.

Part 3, divergence blocks: one right-hand-side evaluation with all probes in one vectorised backward
pass against blocks of ``P B <= PROBE_BLOCK_ROWS`` rows (likelihood/divergence.py).

Part 4, per-evaluation overhead at D = 2: on the 2-D ring (benchmarks/samplers.py, 8 Gaussians,
cheap exact score) the exact-divergence solve in t (dopri5, rtol = atol = 1e-5, float64, 1 thread)
under VP (closed-form rates) and the shipped user path ``QuadraticVPSDE`` (rates by autograd), timed
against its own score calls: ``solve_s``, ``score_s`` (wall time inside the score function, forward
only), their ratio and ``(solve_s - score_s) / NFE``, what one evaluation costs besides the score
(drift and diffusion, divergence backward passes, the integrator), best of ``--reps`` solves.
``--part overhead --label NAME`` runs this part alone with whatever ``sde_diffusion`` is imported
and stores its rows under ``NAME`` beside the rows already in the results file (the table shows
the labels side by side); run it from outside the repository with ``PYTHONPATH`` pointing at an
older checkout to measure that code with the same script.

Threads: ``--threads`` limits torch's intra-op threads AND numpy's BLAS threads (threadpoolctl) to
the same number, so both integrators get the same cores: an unlimited OpenBLAS on this shared
2-core machine made scipy's RK45 step 15x slower at 15,000 state entries (oversubscription, not
scipy). Within a configuration the backends are timed alternately (best of ``--reps``), so their
ratio is meaningful even when absolute times are noisy.

Usage: ``python benchmarks/likelihood.py [--quick] [--sde vp|subvp|ve] [--batch 32] [--reps 2]
[--part all|overhead] [--label NAME]``. Writes ``benchmarks/results/likelihood.json`` and ``.md``
(``likelihood_quick.*`` with ``--quick``); ``--part overhead`` rewrites only part 4's rows of the
given label and renders the rest from the stored results.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the shared analytic oracles

from analytic import core_sdes, mixture  # noqa: E402
from samplers import ring_mixture  # noqa: E402  (the sibling benchmark's 2-D ring)

import sde_diffusion as sd  # noqa: E402
from sde_diffusion.examples.quadratic_vp import QuadraticVPSDE  # noqa: E402
from sde_diffusion.likelihood import divergence, log_likelihood, nats_per_dim  # noqa: E402
from sde_diffusion.likelihood.ode import AugmentedFlow  # noqa: E402

EPS = 1e-5
TARGET = 3.0  # the issue: torchdiffeq at least 3x faster than scipy at rtol = atol = 1e-5
BACKENDS = ("torchdiffeq", "scipy")


@contextmanager
def threads_limited(n):
    """Run with ``n`` torch intra-op threads and ``n`` BLAS threads (numpy, hence scipy's RK45)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        torch.set_num_threads(old)


def timed_solve(sde, score, x, backend, tol, divergence_kind="exact", n_probes=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    out = log_likelihood(
        sde, score, x, eps=EPS, rtol=tol, atol=tol, divergence=divergence_kind, n_probes=n_probes,
        backend=backend, generator=generator,
    )
    return out, time.perf_counter() - start


def transported(out, sde, dist):
    """``logp`` with the prior replaced by the true ``p_T``: ``log p_eps(x)`` up to solver error."""
    return out.logp - sde.prior_logp(out.latent) + dist.log_prob(out.latent, sde.T, sde).to(out.logp.dtype)


def mean_abs_per_dim(a, b, d):
    return (nats_per_dim(a, d) - nats_per_dim(b, d)).abs().mean().item()


# ------------------------------------------------------------------------------- part 1
def accuracy_row(sde, dist, x, backend, divergence_kind, tol, n_probes, seed):
    """One timed solve; returns the table row (errors in nats/dim)."""
    out, seconds = timed_solve(sde, dist.score_fn(sde), x, backend, tol, divergence_kind, n_probes, seed)
    true_terminal = dist.log_prob(out.latent, sde.T, sde)
    d = dist.dim
    return {
        "dim": d,
        "backend": backend,
        "divergence": divergence_kind,
        "tol": tol,
        "err_solver": mean_abs_per_dim(transported(out, sde, dist), dist.log_prob(x, EPS, sde), d),
        "err_p0": mean_abs_per_dim(out.logp, dist.log_prob(x), d),
        "prior_gap": mean_abs_per_dim(sde.prior_logp(out.latent), true_terminal, d),
        "nfe": out.nfe,
        "seconds": seconds,
    }


def run_accuracy(sde, dims, tols, batch, n_probes):
    rows = []
    for dim in dims:
        dist = mixture(dim=dim, seed=dim)
        x = dist.sample(batch, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        timed_solve(sde, dist.score_fn(sde), x[:2], "torchdiffeq", 1e-3)  # warm-up (vmap, autograd)
        for divergence_kind in ("exact", "hutchinson"):
            for tol in tols:
                for backend in BACKENDS:
                    rows.append(accuracy_row(sde, dist, x, backend, divergence_kind, tol, n_probes, seed=dim))
                    print(format_row(ACCURACY, rows[-1]), flush=True)
    return rows


def accuracy_ratios(rows):
    """scipy time / torchdiffeq time for each (dim, divergence, tol)."""
    times = {(r["dim"], r["divergence"], r["tol"], r["backend"]): r["seconds"] for r in rows}
    return [
        {"dim": d, "divergence": div, "tol": tol, "scipy_over_torchdiffeq": times[(d, div, tol, "scipy")] / t}
        for (d, div, tol, backend), t in times.items()
        if backend == "torchdiffeq"
    ]


# ------------------------------------------------------------------------------- part 2
def mlp_score(sde, dim, dtype):
    """The default network (TimeMLP 128 x 4, epsilon parameterization) with a random output layer:
    the shipped initialisation zeroes it, which would make the score zero and the flow linear."""
    torch.manual_seed(0)
    net = sd.TimeMLP((dim,), hidden_dim=128, n_layers=4)
    torch.nn.init.normal_(net.out.weight, std=0.05)
    model = sd.EpsilonParameterization(net, sde).to(dtype).eval()
    return model.requires_grad_(False)


def rhs_seconds(flow, x, reps=5):
    """Best wall time of one evaluation of the augmented right-hand side at t = 0.5 (the minimum:
    on a shared machine, spikes from other processes only ever add time)."""
    state = (x, x.new_zeros(1, x.shape[0]))
    t = torch.tensor(0.5, dtype=x.dtype, device=x.device)
    flow(t, state)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        flow(t, state)
        times.append(time.perf_counter() - start)
    return min(times)


def speed_rows(sde, score_kind, dim, dtype, batch, threads, reps, tol=1e-5):
    """Both backends on one configuration, timed alternately; one row per backend."""
    dist = mixture(dim=dim, seed=dim)
    x = dist.sample(batch, generator=torch.Generator().manual_seed(1), dtype=dtype)
    score = dist.score_fn(sde) if score_kind == "mixture" else mlp_score(sde, dim, dtype)
    with threads_limited(threads):
        best = {}
        for _ in range(reps):
            for backend in BACKENDS:
                out, seconds = timed_solve(sde, score, x, backend, tol)
                if backend not in best or seconds < best[backend][1]:
                    best[backend] = (out, seconds)
        rhs = rhs_seconds(AugmentedFlow(sde.probability_flow(score), divergence.basis_probes(x), trace=True), x)
    (tde, t_tde), (ref, t_ref) = best["torchdiffeq"], best["scipy"]
    common = {"score": score_kind, "dim": dim, "dtype": str(dtype).removeprefix("torch."), "batch": batch,
              "threads": threads, "tol": tol, "rhs_ms": rhs * 1e3,
              "dlogp": mean_abs_per_dim(tde.logp.double(), ref.logp.double(), dim)}
    rows = []
    for backend, (out, seconds) in best.items():
        exact = dist.log_prob(x.double(), EPS, sde)
        err = mean_abs_per_dim(transported(out, sde, dist).double(), exact, dim) if score_kind == "mixture" else None
        rows.append({**common, "backend": backend, "nfe": out.nfe, "seconds": seconds, "err_solver": err,
                     "rhs_share": out.nfe * rhs / seconds, "solver_ms_per_nfe": (seconds - out.nfe * rhs) / out.nfe * 1e3,
                     "scipy_over_torchdiffeq": t_ref / t_tde})
    return rows


def run_speed(sde, grid, reps):
    rows = []
    for score_kind, dim, dtype, batch, threads in grid:
        rows += speed_rows(sde, score_kind, dim, dtype, batch, threads, reps if batch < 5000 else 1)
        for r in rows[-2:]:
            print(format_row(SPEED, r), flush=True)
    return rows


# ------------------------------------------------------------------------------- part 3
def block_rows(sde, cases):
    """RHS time with every probe in one backward pass against the default probe blocks."""
    rows = []
    default = divergence.PROBE_BLOCK_ROWS
    for score_kind, dim, batch in cases:
        dist = mixture(dim=dim, seed=dim)
        x = dist.sample(batch, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
        score = dist.score_fn(sde) if score_kind == "mixture" else mlp_score(sde, dim, torch.float32)
        flow = AugmentedFlow(sde.probability_flow(score), divergence.basis_probes(x), trace=True)
        times = {}
        with threads_limited(1):
            for name, cap in (("one_pass", 10**12), ("blocks", default)):
                divergence.PROBE_BLOCK_ROWS = cap
                times[name] = rhs_seconds(flow, x, reps=7) * 1e3
        divergence.PROBE_BLOCK_ROWS = default
        rows.append({"score": score_kind, "dim": dim, "batch": batch, "probes": dim, "one_pass_ms": times["one_pass"],
                     "blocks_ms": times["blocks"], "speedup": times["one_pass"] / times["blocks"]})
        print(format_row(BLOCKS, rows[-1]), flush=True)
    return rows


# ------------------------------------------------------------------------------- part 4
class TimedScore:
    """A score that adds the wall time spent inside it (forward calls only) to ``seconds``."""

    def __init__(self, score_fn):
        self.score_fn = score_fn
        self.seconds = 0.0

    def __call__(self, x, t):
        start = time.perf_counter()
        out = self.score_fn(x, t)
        self.seconds += time.perf_counter() - start
        return out


def overhead_rows(label, batches, reps, tol=1e-5):
    """Part 4: solve time against the time inside the score, VP and a user path, on the 2-D ring."""
    dist = ring_mixture()
    rows = []
    with threads_limited(1):
        for name, sde in (("vp", sd.VPSDE()), ("user path (QuadraticVPSDE)", QuadraticVPSDE())):
            score_fn = dist.score_fn(sde)
            for batch in batches:
                x = dist.sample(batch, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
                timed_solve(sde, score_fn, x[:2], "torchdiffeq", 1e-3)  # warm-up
                best = None
                for _ in range(reps):
                    score = TimedScore(score_fn)
                    out, seconds = timed_solve(sde, score, x, "torchdiffeq", tol)
                    if best is None or seconds < best[1]:
                        best = (out, seconds, score.seconds)
                out, seconds, score_seconds = best
                rows.append({"code": label, "sde": name, "dim": 2, "batch": batch, "tol": tol, "nfe": out.nfe,
                             "solve_s": seconds, "score_s": score_seconds, "solve_over_score": seconds / score_seconds,
                             "other_ms_per_nfe": (seconds - score_seconds) / out.nfe * 1e3,
                             "mean_logp": out.logp.mean().item()})
                print(format_row(OVERHEAD, rows[-1]), flush=True)
    return rows


# ------------------------------------------------------------------------------- tables
def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


ACCURACY = [("D", "dim", "d"), ("backend", "backend", "s"), ("divergence", "divergence", "s"), ("rtol=atol", "tol", ".0e"),
            ("err_solver (nats/dim)", "err_solver", ".2e"), ("err_p0 (nats/dim)", "err_p0", ".2e"),
            ("prior_gap", "prior_gap", ".2e"), ("NFE", "nfe", "d"), ("time (s)", "seconds", ".2f")]
SPEED = [("score", "score", "s"), ("D", "dim", "d"), ("dtype", "dtype", "s"), ("B", "batch", "d"), ("threads", "threads", "d"),
         ("backend", "backend", "s"), ("NFE", "nfe", "d"), ("time (s)", "seconds", ".3f"), ("RHS (ms)", "rhs_ms", ".2f"),
         ("RHS share", "rhs_share", ".0%"), ("integrator ms/NFE", "solver_ms_per_nfe", ".3f"),
         ("err_solver", "err_solver", ".1e"), ("|dlogp|/D between backends", "dlogp", ".1e"),
         ("scipy / torchdiffeq time", "scipy_over_torchdiffeq", ".2f")]
OVERHEAD = [("code", "code", "s"), ("SDE", "sde", "s"), ("D", "dim", "d"), ("B", "batch", "d"), ("NFE", "nfe", "d"),
            ("solve (s)", "solve_s", ".3f"), ("in the score (s)", "score_s", ".3f"), ("solve / score", "solve_over_score", ".2f"),
            ("rest per NFE (ms)", "other_ms_per_nfe", ".3f"), ("mean logp", "mean_logp", ".12f")]
BLOCKS = [("score", "score", "s"), ("D", "dim", "d"), ("B", "batch", "d"), ("probes", "probes", "d"),
          ("one pass (ms)", "one_pass_ms", ".1f"), ("blocks (ms)", "blocks_ms", ".1f"), ("speed-up", "speedup", ".2f")]


def header(columns):
    return "| " + " | ".join(c[0] for c in columns) + " |\n|" + "---|" * len(columns)


def format_row(columns, row):
    return "| " + " | ".join(_fmt(row[key], spec) for _, key, spec in columns) + " |"


def verdict(speed):
    """Whether the target holds, per thread count (the 2-thread rows share two cores with whatever
    else runs on the machine and are by far the noisiest)."""
    lines = []
    for threads in sorted({r["threads"] for r in speed}):
        ratios = [r for r in speed if r["backend"] == "torchdiffeq" and r["threads"] == threads]
        best = max(ratios, key=lambda r: r["scipy_over_torchdiffeq"])
        held = sum(r["scipy_over_torchdiffeq"] >= TARGET for r in ratios)
        lines.append(
            f"- {threads} thread(s): **the {TARGET:.0f}x target holds in {held} of {len(ratios)} configurations**; "
            f"scipy / torchdiffeq time {_span(ratios, 'scipy_over_torchdiffeq', '.2f')} (highest: {best['score']}, "
            f"D={best['dim']}, {best['dtype']}, B={best['batch']})."
        )
    return "\n".join(lines)


def _span(rows, key, spec):
    values = [r[key] for r in rows]
    return f"{format(min(values), spec)} to {format(max(values), spec)}" if values else "-"


def findings(speed):
    """Where the time goes on the fewest threads: the RHS share and the integrators' own cost per evaluation
    (medians over configurations: the per-row costs are differences of two noisy measurements)."""
    fewest = min(r["threads"] for r in speed)
    one = [r for r in speed if r["threads"] == fewest]
    cost = {b: statistics.median(r["solver_ms_per_nfe"] for r in one if r["backend"] == b) for b in BACKENDS}
    share = statistics.median(r["rhs_share"] for r in one)
    return (
        f"Both backends integrate with the same Dormand-Prince tableau at the same tolerance and need about the same "
        f"NFE (their step controllers differ only in the error norm: torchdiffeq takes the larger RMS error of x and "
        f"of the log-density, scipy one RMS over both). On {fewest} thread(s) the shared right-hand side takes a median "
        f"{share:.0%} of a solve. Besides it, torchdiffeq's dopri5 spends a median {cost['torchdiffeq']:.2f} ms per "
        f"evaluation on its own arithmetic (every stage sum, error norm and step-size update is a separate small "
        f"torch op), scipy's RK45 {cost['scipy']:.2f} ms (numpy on one float64 vector, the stage sums one "
        f"matrix-vector product). With equal NFE and an equal RHS, scipy / torchdiffeq = (RHS + scipy's cost) / "
        f"(RHS + torchdiffeq's cost), so 3x would need scipy's integrator to cost two RHS evaluations more per step "
        f"than torchdiffeq's. That happens only when numpy's BLAS threads fight for the cores (2 threads, 10^4 state "
        f"entries and more, on a busy machine): the 2-thread rows measure contention more than the integrators."
    )


def overhead_section(rows):
    """Part 4's table, the rows of each (SDE, B) side by side across code labels, and their speed-ups."""
    if not rows:
        return []
    order = sorted(rows, key=lambda r: (r["sde"], r["batch"]))
    lines = ["## Per-evaluation overhead at D = 2: the solve against its score calls (float64, 1 thread)", "",
             "Exact divergence, dopri5 at rtol = atol = 1e-5 in t, on the 2-D ring of benchmarks/samplers.py. "
             "solve / score: the solve's wall time over the time spent inside the score function; rest per NFE: "
             "everything else (drift and diffusion, divergence backward passes, the integrator) per evaluation. "
             "Each code label is a run of `--part overhead --label ...` on that code (module docstring: an older "
             "commit is run with PYTHONPATH at its sde_diffusion); that option reruns this part alone, so the parts "
             "above keep the numbers of the last full run.", "",
             header(OVERHEAD), *(format_row(OVERHEAD, r) for r in order), ""]
    labels = list(dict.fromkeys(r["code"] for r in rows))
    if len(labels) > 1:
        first, last = labels[0], labels[-1]
        lines += [f"| SDE | B | solve time {first} / {last} | rest per NFE {first} / {last} | NFE equal | mean logp difference (abs) |",
                  "|---|---|---|---|---|---|"]
        for key in dict.fromkeys((r["sde"], r["batch"]) for r in order):
            a = next((r for r in rows if r["code"] == first and (r["sde"], r["batch"]) == key), None)
            b = next((r for r in rows if r["code"] == last and (r["sde"], r["batch"]) == key), None)
            if a and b:
                lines.append(f"| {key[0]} | {key[1]} | {a['solve_s'] / b['solve_s']:.2f} | "
                             f"{a['other_ms_per_nfe'] / b['other_ms_per_nfe']:.2f} | {a['nfe'] == b['nfe']} | "
                             f"{abs(a['mean_logp'] - b['mean_logp']):.1e} |")
        lines.append("")
    return lines


def markdown(config, accuracy, ratios, speed, blocks, overhead=()):
    lines = [
        "# Probability-flow likelihood benchmark",
        "",
        f"Config: {json.dumps(config)}",
        "",
        "## Accuracy against closed forms",
        "",
        header(ACCURACY),
        *(format_row(ACCURACY, r) for r in accuracy),
        "",
        "| D | divergence | rtol=atol | scipy time / torchdiffeq time |",
        "|---|---|---|---|",
        *(f"| {r['dim']} | {r['divergence']} | {r['tol']:.0e} | {r['scipy_over_torchdiffeq']:.2f} |" for r in ratios),
        "",
        "err_solver: returned logp with the prior replaced by the true p_T, against the exact log p_eps "
        "(solver and divergence-estimator error). err_p0: returned logp against the exact log p_0 "
        "(includes the SDE's prior mismatch prior_gap).",
        "",
        "## Speed: torchdiffeq against scipy at rtol = atol = 1e-5, exact divergence",
        "",
        verdict(speed),
        "",
        findings(speed),
        "",
        header(SPEED),
        *(format_row(SPEED, r) for r in speed),
        "",
        "RHS: one evaluation of the augmented right-hand side (score, drift, divergence), identical for both "
        "backends. integrator ms/NFE: (time - NFE x RHS) / NFE, what the integrator spends per evaluation "
        "besides the RHS (noisy: a small difference of two measurements). err_solver: mean |error| in "
        "nats/dim against the closed form (mixture score only).",
        "",
        "## Divergence: one vectorised backward pass against probe blocks (float32, 1 thread)",
        "",
        header(BLOCKS),
        *(format_row(BLOCKS, r) for r in blocks),
        "",
        *overhead_section(list(overhead)),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: few, small configurations")
    parser.add_argument("--sde", default="vp", choices=sorted(core_sdes()))
    parser.add_argument("--batch", type=int, default=32, help="points per mixture in the accuracy part")
    parser.add_argument("--n-probes", type=int, default=1, help="Hutchinson probes per point (accuracy part)")
    parser.add_argument("--reps", type=int, default=2, help="timed solves per backend in the speed part (best kept)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts of the speed part")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--part", default="all", choices=("all", "overhead"), help="overhead: part 4 alone (module docstring)")
    parser.add_argument("--label", default="this checkout", help="names part 4's rows (the code measured)")
    args = parser.parse_args(argv)
    stem = "likelihood_quick" if args.quick else "likelihood"
    overhead_batches = (32,) if args.quick else (32, 1000)
    if args.part == "overhead":
        if not (args.out / f"{stem}.json").is_file():
            parser.error(f"--part overhead adds to {args.out / stem}.json, which does not exist: run the whole benchmark first")
        print(header(OVERHEAD))
        rows = overhead_rows(args.label, overhead_batches, max(args.reps, 5))
        result = json.loads((args.out / f"{stem}.json").read_text())
        result["overhead"] = [r for r in result.get("overhead", []) if r["code"] != args.label] + rows
        write_results(args.out, stem, result)
        return
    sde = core_sdes()[args.sde]
    f32, f64 = torch.float32, torch.float64
    threads = [int(t) for t in args.threads.split(",")]
    if args.quick:
        dims, batch, tols = (2, 16), 4, (1e-3, 1e-5)
        grid = [(s, 2, f64, 32, min(threads)) for s in ("mixture", "mlp")]
        cases = [("mixture", 16, 600)]
    else:
        dims, batch, tols = (2, 16, 64), args.batch, (1e-3, 1e-5)
        grid = [(s, 2, dt, b, th) for s in ("mixture", "mlp") for dt in (f64, f32) for b in (32, 1000, 5000) for th in threads]
        grid += [(s, 16, f32, 1000, min(threads)) for s in ("mixture", "mlp")]
        cases = [(s, 16, b) for s in ("mixture", "mlp") for b in (256, 1000, 5000)] + [("mlp", 2, 5000), ("mlp", 8, 1000)]
    config = {
        "sde": args.sde, "dims": dims, "batch": batch, "tols": tols, "n_probes": args.n_probes, "eps": EPS,
        "accuracy_dtype": "float64", "accuracy_threads": 1, "speed_threads": threads, "reps": args.reps,
        "probe_block_rows": divergence.PROBE_BLOCK_ROWS, "torch": torch.__version__, "python": platform.python_version(),
    }
    print(header(ACCURACY))
    with threads_limited(1):
        accuracy = run_accuracy(sde, dims, tols, batch, args.n_probes)
    ratios = accuracy_ratios(accuracy)
    print(header(SPEED))
    speed = run_speed(sde, grid, args.reps)
    print(verdict(speed))
    print(header(BLOCKS))
    blocks = block_rows(sde, cases)
    print(header(OVERHEAD))
    overhead = overhead_rows(args.label, overhead_batches, max(args.reps, 5))
    result = {"config": config, "rows": accuracy, "ratios": ratios, "speed": speed, "divergence_blocks": blocks, "overhead": overhead}
    write_results(args.out, stem, result)


def write_results(out, stem, result):
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    md = markdown(result["config"], result["rows"], result["ratios"], result["speed"], result["divergence_blocks"], result.get("overhead", ()))
    (out / f"{stem}.md").write_text(md)
    print(f"wrote {out / stem}.json and .md")


if __name__ == "__main__":
    main()
