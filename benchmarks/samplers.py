"""Sampler accuracy against NFE, and sampler overhead, on Gaussian mixtures with exact scores.

For every sampler and NFE budget (10, 20, 50, 100, 250, 1000) the samples of ``p_eps`` (VP SDE,
eps = 1e-3) are compared with fresh exact samples of ``p_eps``: sliced Wasserstein-2 distance (512
random directions) and the gap between the mean exact log-density of the samples and of true data.
The statistical floor (the same distances between two independent exact sample sets of the same
size, mean and spread over 5 pairs) is printed beside them, so a number at the floor means "as good
as this sample size can tell". All samplers start from the same prior draws.

The overhead table times each sampler with a cheap score (the 64-D mixture) and an expensive one
(a TimeMLP with about 0.9M parameters) and reports the wall time per step not spent in the score.

All timing runs single-threaded (``torch.set_num_threads(1)``): the machine is shared and tiny
per-step tensor ops only pay synchronisation for extra threads. Timings are noisy; compare ratios
within one run.

    python benchmarks/samplers.py            # full run: 6 to 10 minutes on one busy core
    python benchmarks/samplers.py --quick    # smoke run (about a minute), writes samplers_quick.*
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

import sde_diffusion as sd
from sde_diffusion import samplers as S
from sde_diffusion.timesteps import edm_time_grid, log_snr_time_grid, uniform_time_grid

EPS = 1e-3
RESULTS = Path(__file__).parent / "results"


# ------------------------------------------------------------------------------------- problems
def ring_mixture() -> sd.GaussianMixture:
    """2-D: 8 Gaussians on a circle of radius 3, std 0.25, weights growing 1 : 2.75 around it."""
    angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 3.0 * torch.stack([angle.cos(), angle.sin()], 1)
    return sd.GaussianMixture(1.0 + torch.arange(8) / 4.0, means, torch.full((8,), 0.25))


def random_mixture(dim: int = 64, k: int = 8, seed: int = 0) -> sd.GaussianMixture:
    """``dim``-D: ``k`` components with means of norm ~3 and anisotropic covariances (eigenvalues 0.05 to ~0.5)."""
    g = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.randn(k, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    a = torch.randn(k, dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    covs = 0.1 * a @ a.transpose(1, 2) + 0.05 * torch.eye(dim, dtype=torch.float64)
    return sd.GaussianMixture(torch.rand(k, generator=g) + 0.5, means, covs)


# -------------------------------------------------------------------------------------- metrics
def sliced_w2(a: torch.Tensor, b: torch.Tensor, directions: torch.Tensor) -> float:
    """Sliced W2 between equal-size samples ``(n, D)``: RMS over unit ``directions`` ``(L, D)`` of the
    1-D W2 of the projections (sorted matching is the optimal 1-D coupling)."""
    pa, pb = (a @ directions.T).sort(0).values, (b @ directions.T).sort(0).values
    return (pa - pb).pow(2).mean().sqrt().item()


@dataclass
class Judge:
    """Exact ``p_eps`` of one problem: a reference sample set, projection directions, the floor."""

    dist: sd.GaussianMixture
    sde: sd.SDE
    n: int
    seed: int = 1
    floor: dict = field(init=False)

    def __post_init__(self):
        g = torch.Generator().manual_seed(self.seed)
        self.directions = torch.nn.functional.normalize(torch.randn(512, self.dist.dim, generator=g), dim=1)
        self.reference = self.true_samples(g)
        self.reference_logp = self.logp(self.reference)
        pairs = [self.distances(self.true_samples(g)) for _ in range(5)]
        self.floor = {k: (torch.tensor([p[k] for p in pairs]).mean().item(), torch.tensor([p[k] for p in pairs]).std().item())
                      for k in pairs[0]}

    def true_samples(self, g: torch.Generator) -> torch.Tensor:
        x0 = self.dist.sample(self.n, generator=g, dtype=torch.float32)
        return self.sde.perturb(x0, EPS, generator=g)[0]

    def logp(self, x: torch.Tensor) -> float:
        return self.dist.log_prob(x.double(), EPS, self.sde).mean().item()

    def distances(self, x: torch.Tensor) -> dict:
        x = x.reshape(len(x), -1)
        if not torch.isfinite(x).all():
            return {"sw2": float("nan"), "logp_gap": float("nan")}
        return {"sw2": sliced_w2(x, self.reference, self.directions), "logp_gap": self.logp(x) - self.reference_logp}


# ------------------------------------------------------------------------------------- samplers
@dataclass
class Entry:
    """A sampler configuration: its grid and its score evaluations per step (``stages``); a budget of
    ``nfe`` buys ``nfe // stages`` steps (Heun spends ``2N - 1``, within the same budget)."""

    name: str
    fn: Callable
    grid: Callable
    stages: int = 1
    options: dict = field(default_factory=dict)
    stochastic: bool = False

    def steps(self, nfe: int) -> int:
        return nfe // self.stages

    def timed_run(self, sde, score_fn, x, nfe, generator) -> tuple[S.SamplerOutput, float]:
        """Build the grid for an NFE budget, then run and time the sampler alone (seconds)."""
        ts = self.grid(sde, self.steps(nfe), EPS, dtype=x.dtype)
        start = time.perf_counter()
        out = self.fn(sde, score_fn, x, ts, generator=generator, **self.options)
        return out, time.perf_counter() - start


def entries() -> list[Entry]:
    langevin = S.LangevinCorrector(snr=0.16, norm="batch")  # per-sample: eps ~ 1/norm(score)^2 blows up at modes
    pc = {"predictor": S.ReverseDiffusionPredictor(), "corrector": langevin, "denoise": False}
    ancestral = {"predictor": S.AncestralPredictor(), "corrector": S.NoCorrector(), "denoise": False}
    return [
        Entry("euler_maruyama", S.euler_maruyama, uniform_time_grid, stochastic=True),
        Entry("pc (reverse diffusion + langevin)", S.predictor_corrector, uniform_time_grid, 2, pc, True),
        Entry("ancestral", S.predictor_corrector, uniform_time_grid, 1, ancestral, True),
        Entry("torchsde srk", S.torchsde_sampler, uniform_time_grid, 4, {"method": "srk"}, True),
        Entry("ddim eta=1", S.ddim, log_snr_time_grid, 1, {"eta": 1.0}, True),
        Entry("ode euler", S.probability_flow_sampler, uniform_time_grid, 1, {"method": "euler"}),
        Entry("ode rk4", S.probability_flow_sampler, uniform_time_grid, 4, {"method": "rk4"}),
        Entry("ddim eta=0", S.ddim, log_snr_time_grid),
        Entry("heun (edm grid)", S.heun, edm_time_grid, 2),
        Entry("dpm_solver++ 2M", S.dpm_solver_pp, log_snr_time_grid, 1, {"order": 2}),
    ]


ADAPTIVE_TOLERANCES = [1e-1, 1e-2, 1e-3, 1e-4, 1e-5]
FAST = ("ddim eta=0", "heun (edm grid)", "dpm_solver++ 2M")
"""The fast samplers of the target: a budget of 20 NFE."""


def accuracy_table(name, dist, sde, n, budgets, tolerances, log) -> dict:
    judge = Judge(dist, sde, n)
    x = sde.prior_sample((n, dist.dim), generator=torch.Generator().manual_seed(2))
    score_fn = dist.score_fn(sde)
    rows = []

    def record(sampler, budget, run):
        out, seconds = run()
        row = {"problem": name, "sampler": sampler, "budget": budget, "nfe": out.nfe, "seconds": seconds,
               **judge.distances(out.samples)}
        rows.append(row)
        log(f"{name:>4} {sampler:<34} budget {str(budget):>6} NFE {out.nfe:>5}  SW2 {row['sw2']:.4f}  "
            f"logp gap {row['logp_gap']:+.4f}  {row['seconds']:.2f}s")

    for entry in entries():
        for nfe in budgets:
            if entry.steps(nfe) >= 1:
                record(entry.name, nfe, lambda: entry.timed_run(sde, score_fn, x, nfe, torch.Generator().manual_seed(3)))
    dopri5 = Entry("ode dopri5", S.probability_flow_sampler, lambda sde, n, eps, dtype: torch.tensor([sde.T, eps], dtype=dtype))
    for tol in tolerances:
        dopri5.options = {"rtol": tol, "atol": tol}
        record(dopri5.name, f"tol {tol:g}", lambda: dopri5.timed_run(sde, score_fn, x, 1, None))
    return {"floor": judge.floor, "n_samples": n, "dim": dist.dim, "rows": rows}


def matches(row: dict, em: dict, floor: dict) -> dict:
    """Whether ``row`` is as accurate as Euler-Maruyama at 1000 steps (``em``) on each metric, up to
    twice the spread of the statistical floor (SW2 never needs to beat the floor's mean)."""
    sw2 = row["sw2"] <= max(em["sw2"], floor["sw2"][0]) + 2 * floor["sw2"][1]
    gap = abs(row["logp_gap"]) <= abs(em["logp_gap"]) + 2 * floor["logp_gap"][1]
    return {"sw2": bool(sw2), "logp_gap": bool(gap), "both": bool(sw2 and gap)}


def target_check(table: dict) -> dict:
    """The issue's target: a fast sampler at 20 NFE is as accurate as Euler-Maruyama at 1000 steps.
    Also, per sampler, the smallest NFE from which on it stays that accurate (None: never)."""
    rows, floor = table["rows"], table["floor"]
    em = next(r for r in rows if r["sampler"] == "euler_maruyama" and r["budget"] == 1000)
    fast = [r for r in rows if r["budget"] == 20 and r["sampler"] in FAST]
    best = min(fast, key=lambda r: abs(r["logp_gap"]))
    nfe_to_match = {}
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        ok = [(r["nfe"], matches(r, em, floor)["both"]) for r in sorted(rows, key=lambda r: r["nfe"]) if r["sampler"] == sampler]
        nfe_to_match[sampler] = next((n for i, (n, _) in enumerate(ok) if all(o for _, o in ok[i:])), None)
    return {"em_1000": {k: em[k] for k in ("nfe", "sw2", "logp_gap")},
            "fast_20": {k: best[k] for k in ("sampler", "nfe", "sw2", "logp_gap")},
            "holds": {k: any(matches(r, em, floor)[k] for r in fast) for k in ("sw2", "logp_gap", "both")},
            "nfe_to_match": nfe_to_match}


# ------------------------------------------------------------------------------------- overhead
class TimedScore:
    """A score wrapper that accumulates the wall time spent inside the score."""

    def __init__(self, score_fn):
        self.score_fn, self.seconds = score_fn, 0.0

    def __call__(self, x, t):
        start = time.perf_counter()
        out = self.score_fn(x, t)
        self.seconds += time.perf_counter() - start
        return out


def overhead_table(n_points: int, n_steps: int, log) -> list[dict]:
    sde, dist = sd.VPSDE(), random_mixture(64)
    net = sd.TimeMLP((64,), hidden_dim=512, n_layers=4).eval()
    scores = {"gmm 64-D (cheap)": dist.score_fn(sde), "mlp 0.9M params (expensive)": lambda x, t: net(x, t)}
    x = sde.prior_sample((n_points, 64), generator=torch.Generator().manual_seed(4))
    rows = []
    for score_name, score_fn in scores.items():
        for entry in entries():
            timed, steps = TimedScore(score_fn), n_steps
            with torch.no_grad():
                entry.timed_run(sde, score_fn, x, steps * entry.stages, None)  # warm-up, untimed
                out, wall = entry.timed_run(sde, timed, x, steps * entry.stages, torch.Generator().manual_seed(5))
            rows.append({"score": score_name, "sampler": entry.name, "steps": steps, "nfe": out.nfe,
                         "wall_ms_per_step": 1e3 * wall / steps, "score_ms_per_step": 1e3 * timed.seconds / steps,
                         "overhead_ms_per_step": 1e3 * (wall - timed.seconds) / steps,
                         "overhead_fraction": (wall - timed.seconds) / wall})
            log(f"{score_name:<28} {entry.name:<34} overhead {rows[-1]['overhead_ms_per_step']:.3f} ms/step "
                f"({100 * rows[-1]['overhead_fraction']:.1f}% of wall)")
    return rows


# -------------------------------------------------------------------------------------- reports
def markdown(results: dict) -> str:
    lines = ["# Sampler benchmark", "", f"VP SDE, eps = {EPS}, exact mixture scores; {results['note']}", ""]
    for name, table in results["problems"].items():
        floor = table["floor"]
        lines += [f"## {name} ({table['dim']}-D, {table['n_samples']} samples)", "",
                  f"Statistical floor (two exact sample sets): SW2 {floor['sw2'][0]:.4f} +- {floor['sw2'][1]:.4f}, "
                  f"logp gap {floor['logp_gap'][0]:+.4f} +- {floor['logp_gap'][1]:.4f}", "",
                  "| sampler | budget | NFE | sliced W2 | logp gap (nats, total over D) | seconds |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['sampler']} | {r['budget']} | {r['nfe']} | {r['sw2']:.4f} | {r['logp_gap']:+.4f} | {r['seconds']:.2f} |"
                  for r in table["rows"]]
        t, verdict = results["target"][name], lambda ok: "holds" if ok else "does not hold"
        lines += ["", f"Target, a fast sampler at 20 NFE as accurate as Euler-Maruyama at 1000 steps (within twice "
                  f"the floor's spread): on SW2 **{verdict(t['holds']['sw2'])}**, on the logp gap "
                  f"**{verdict(t['holds']['logp_gap'])}**. Best at 20 NFE: {t['fast_20']['sampler']} "
                  f"(NFE {t['fast_20']['nfe']}, SW2 {t['fast_20']['sw2']:.4f}, gap {t['fast_20']['logp_gap']:+.4f}); "
                  f"Euler-Maruyama at 1000: SW2 {t['em_1000']['sw2']:.4f}, gap {t['em_1000']['logp_gap']:+.4f}.", "",
                  "| sampler | NFE from which it matches Euler-Maruyama at 1000 on both metrics |", "|---|---|"]
        lines += [f"| {k} | {'-' if v is None else v} |" for k, v in t["nfe_to_match"].items()]
        lines.append("")
    lines += ["## Overhead per step beyond the score (single thread)", "",
              "| score | sampler | steps | NFE | wall ms/step | score ms/step | overhead ms/step | overhead % |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['score']} | {r['sampler']} | {r['steps']} | {r['nfe']} | {r['wall_ms_per_step']:.3f} | "
              f"{r['score_ms_per_step']:.3f} | {r['overhead_ms_per_step']:.3f} | {100 * r['overhead_fraction']:.1f} |"
              for r in results["overhead"]]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = results["problems"]
    fig, axes = plt.subplots(2, len(problems), figsize=(6.5 * len(problems), 9), squeeze=False)
    for col, (name, table) in enumerate(problems.items()):
        for row, (metric, label) in enumerate([("sw2", "sliced W2"), ("logp_gap", "|logp gap| (nats)")]):
            ax = axes[row, col]
            stochastic = {e.name for e in entries() if e.stochastic}
            for k, sampler in enumerate(dict.fromkeys(r["sampler"] for r in table["rows"])):
                pts = sorted((r["nfe"], abs(r[metric])) for r in table["rows"] if r["sampler"] == sampler)
                ax.plot(*zip(*pts), marker="o", ms=3, label=sampler, color=(plt.cm.tab10.colors + ("black",))[k % 11],
                        ls="--" if sampler in stochastic else "-")
            mean, spread = table["floor"][metric]
            ax.axhline(abs(mean) + 2 * spread, color="black", lw=1, ls=":",
                       label="statistical floor (|mean| + 2 sd): below, as good as exact samples")
            ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel=label, title=f"{name}: {label} vs NFE")
            ax.grid(True, which="both", alpha=0.3)
    axes[0, -1].legend(fontsize=7, loc="upper right")
    fig.suptitle("VP SDE, exact scores; dashed: stochastic samplers, solid: deterministic")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer budgets and samples")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for samplers.{json,md,png}")
    args = parser.parse_args()
    torch.set_num_threads(1)  # see the module docstring
    budgets = [10, 20, 1000] if args.quick else [10, 20, 50, 100, 250, 1000]
    tolerances = ADAPTIVE_TOLERANCES[:2] if args.quick else ADAPTIVE_TOLERANCES
    sde = sd.VPSDE()
    problems = {"2-D ring": (ring_mixture(), 500 if args.quick else 4000),
                "64-D mixture": (random_mixture(64), 200 if args.quick else 2000)}
    results = {"note": "quick smoke run" if args.quick else "full run", "problems": {}, "target": {}}
    for name, (dist, n) in problems.items():
        results["problems"][name] = accuracy_table(name, dist, sde, n, budgets, tolerances, print)
        results["target"][name] = target_check(results["problems"][name])
    results["overhead"] = overhead_table(100 if args.quick else 1000, 5 if args.quick else 20, print)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / ("samplers_quick" if args.quick else "samplers")
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1))
    text = markdown(results)
    stem.with_suffix(".md").write_text(text)
    plot(results, stem.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
