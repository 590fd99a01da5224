"""GPU throughput of the DDPM++-sized U-Net per precision (fp32, bf16, fp16) and compile (false, true).

What is measured, on one CUDA device, for the 58.7M-parameter U-Net of conf/model/ddpmpp_cifar.yaml at
32x32 (eps parameterization, VP SDE, fresh weights: speed does not depend on the weights):

- training: images/s of ``sde_diffusion.Trainer.train_step`` (denoising score matching, Adam, clipping,
  EMA; autocast and, for fp16, the GradScaler are the Trainer's) on random images in [-1, 1], batch 128.
  Warm-up steps first (the first one, which compiles under compile=true, is reported on its own as
  "first step s"), then ``--steps`` timed steps between ``torch.cuda.synchronize()`` calls; the ratio to
  fp32 eager, and the peak memory (``torch.cuda.max_memory_allocated``, reset between settings).
- sampling: samples/s of ``sde_diffusion.samplers.draw_samples`` with DPM-Solver++(2M) (20 steps on the
  log-SNR grid), EDM's Heun sampler (18 steps on EDM's rho = 7 grid: 35 NFE) and Euler-Maruyama (100
  uniform steps), as conf/sampler/{dpm_solver,heun,euler_maruyama}.yaml; the network wrapped by
  ``sde_diffusion.precision.accelerate``, batch 256, one untimed run (compilation) before the timed one.
- likelihood: points/s and NFE of ``sde_diffusion.log_likelihood`` (dopri5, rtol = atol = 1e-5,
  Hutchinson divergence with one Rademacher probe) on 64 random images, fp32 and eager only (the library
  refuses reduced precision and compilation for the ODE likelihood), after an untimed loose-tolerance solve.

bf16 is skipped (and says so in the table) where the device has no bfloat16 arithmetic, compile=true
where Triton is missing; a setting that raises (out of memory, a compilation failure) is recorded with
its error and the others still run. Writes benchmarks/results/gpu.{md,json} (or ``--out DIR``) with the device
name, torch version and the tables.

    python benchmarks/gpu.py                                   # full run on a CUDA machine
    python benchmarks/gpu.py --device cpu --quick --out /tmp/g  # smoke run of every code path on a CPU

Without a CUDA device (and without ``--device cpu --quick``) it prints one line saying that nothing was
measured and exits with status 0, writing nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import sde_diffusion as sd
from sde_diffusion import samplers, timesteps
from sde_diffusion.precision import PRECISIONS, accelerate, check_compile, check_precision

RESULTS = Path(__file__).resolve().parent / "results"
NO_CUDA = "benchmarks/gpu.py: no CUDA device here; nothing measured (run it on a GPU machine)"
LIKELIHOOD_NOTE = (
    "fp32 only: the adaptive solver controls the error to rtol = 1e-5, far below the rounding of bf16 (~4e-3) and fp16 (~5e-4), "
    "so the library keeps the ODE likelihood in fp32 (sde-eval refuses precision=bf16/fp16 for bound=ode); and eager: "
    "its divergence differentiates the network through torch.vmap, which compiled graphs do not support"
)


@dataclass(frozen=True)
class Net:
    """A U-Net's size: the ``sd.UNet`` keywords and its sinusoidal time embedding."""

    data_shape: tuple[int, int, int]
    channels: int
    channel_mult: tuple[int, ...]
    n_res_blocks: int
    attention_resolutions: tuple[int, ...]
    dropout: float
    time_dim: int
    time_scale: float = 1000.0


# mirrors conf/model/ddpmpp_cifar.yaml (DDPM++ cont. at CIFAR-10 size, 58.7M parameters): keep the two in step
DDPMPP = Net((3, 32, 32), channels=128, channel_mult=(1, 2, 2, 2), n_res_blocks=4, attention_resolutions=(16,), dropout=0.1, time_dim=128)
TINY = Net((3, 8, 8), channels=16, channel_mult=(1, 2), n_res_blocks=1, attention_resolutions=(4,), dropout=0.1, time_dim=16)
# name: (sampler, grid factory), as conf/sampler/<name>.yaml; the grid's n_steps comes from the Setup
SAMPLERS: dict[str, tuple[Callable, Callable]] = {
    "dpm_solver": (functools.partial(samplers.dpm_solver_pp, order=2), timesteps.log_snr_time_grid),
    "heun": (samplers.heun, functools.partial(timesteps.edm_time_grid, rho=7.0)),
    "euler_maruyama": (samplers.euler_maruyama, timesteps.uniform_time_grid),
}


@dataclass(frozen=True)
class Setup:
    """One run's sizes: the network, the batches and step counts, and the (precision, compile) settings compared."""

    net: Net
    train_batch: int
    warmup: int
    steps: int
    sample_batch: int
    sampler_steps: dict[str, int]
    likelihood_batch: int
    settings: tuple[tuple[str, bool], ...]


FULL = Setup(
    net=DDPMPP,
    train_batch=128,
    warmup=3,
    steps=50,
    sample_batch=256,
    sampler_steps={"dpm_solver": 20, "heun": 18, "euler_maruyama": 100},
    likelihood_batch=64,
    settings=tuple((p, c) for p in PRECISIONS for c in (False, True)),
)
QUICK = Setup(
    net=TINY,
    train_batch=8,
    warmup=1,
    steps=2,
    sample_batch=8,
    sampler_steps={"dpm_solver": 4, "heun": 3, "euler_maruyama": 5},
    likelihood_batch=4,
    settings=(("fp32", False), ("bf16", False)),
)


# ------------------------------------------------------------------------------ device helpers
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh_state(device: torch.device) -> None:
    """Drop the previous setting's tensors and compiled graphs, and restart the peak-memory count."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()


def unsupported(precision: str, compile: bool, device: torch.device) -> str | None:
    """Why ``device`` cannot run this setting here (the library's one-line reason), or None."""
    try:
        check_precision(precision, device)
        check_compile(compile, device)
    except ValueError as err:
        return str(err)
    return None


# ---------------------------------------------------------------------------------- the model
def score_model(net: Net, sde: sd.SDE) -> torch.nn.Module:
    """The U-Net ``net`` with fresh weights (seed 0), in the eps parameterization."""
    torch.manual_seed(0)
    unet = sd.UNet(
        data_shape=net.data_shape,
        channels=net.channels,
        channel_mult=net.channel_mult,
        n_res_blocks=net.n_res_blocks,
        attention_resolutions=net.attention_resolutions,
        dropout=net.dropout,
        time_embedding=sd.SinusoidalEmbedding(dim=net.time_dim, time_scale=net.time_scale),
    )
    return sd.EpsilonParameterization(unet, sde)


def random_images(n: int, net: Net, device: torch.device) -> torch.Tensor:
    """``n`` images uniform in [-1, 1] (seed 0): the data range, no download."""
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(n, *net.data_shape, generator=gen) * 2 - 1).to(device)


# ------------------------------------------------------------------------------ measurements
def measure_training(setup: Setup, sde: sd.SDE, device: torch.device, precision: str, compile: bool) -> dict:
    """Images/s of Trainer.train_step after the warm-up, the first step's seconds and the peak memory."""
    opts = sd.TrainOptions(steps=setup.warmup + setup.steps, batch_size=setup.train_batch, progress=False)
    data = random_images(4 * setup.train_batch, setup.net, device)
    trainer = sd.Trainer(score_model(setup.net, sde), sde, data, opts, device=device, precision=precision, compile=compile)
    trainer.model.train()
    synchronize(device)
    start = time.perf_counter()
    trainer.train_step()
    synchronize(device)
    first = time.perf_counter() - start
    for _ in range(setup.warmup - 1):
        trainer.train_step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(setup.steps):
        trainer.train_step()
    synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "images_per_sec": setup.steps * setup.train_batch / seconds,
        "ms_per_step": 1e3 * seconds / setup.steps,
        "first_step_seconds": first,
        "peak_memory_gib": peak_memory_gib(device),
    }


def measure_sampling(
    model: torch.nn.Module, setup: Setup, sde: sd.SDE, device: torch.device, precision: str, compile: bool, sampler: str
) -> dict:
    """Samples/s of ``sampler`` on draw_samples with ``model`` accelerated, timed on the second of two identical runs."""
    net = accelerate(model, precision=precision, compile=compile, device=device)
    fn, grid = SAMPLERS[sampler]
    grid = functools.partial(grid, n_steps=setup.sampler_steps[sampler], eps=1e-3)
    shape, n = setup.net.data_shape, setup.sample_batch
    first, timed = (samplers.draw_samples(sde, net, fn, grid, shape, n, batch_size=n, seed=0, device=device) for _ in range(2))
    return {
        "nfe": timed.batch_nfe[0],
        "samples_per_sec": n / timed.seconds,
        "seconds": timed.seconds,
        "first_run_seconds": first.seconds,
        "peak_memory_gib": peak_memory_gib(device),
    }


def timed_likelihood(net: torch.nn.Module, sde: sd.SDE, x: torch.Tensor, tol: float) -> tuple[int, float]:
    """NFE and seconds of one Hutchinson (one probe) ODE likelihood solve at rtol = atol = ``tol``."""
    gen = torch.Generator(device=x.device).manual_seed(0)
    synchronize(x.device)
    start = time.perf_counter()
    out = sd.log_likelihood(sde, net, x, rtol=tol, atol=tol, divergence="hutchinson", n_probes=1, generator=gen)
    synchronize(x.device)
    return out.nfe, time.perf_counter() - start


def measure_likelihood(model: torch.nn.Module, setup: Setup, sde: sd.SDE, device: torch.device, precision: str, compile: bool) -> dict:
    """Points/s and NFE of the ODE likelihood at rtol = atol = 1e-5, after a warm-up solve at 1e-2."""
    net = accelerate(model, precision=precision, compile=compile, device=device)
    x = random_images(setup.likelihood_batch, setup.net, device)
    _, first = timed_likelihood(net, sde, x, 1e-2)
    nfe, seconds = timed_likelihood(net, sde, x, 1e-5)
    return {
        "nfe": nfe,
        "points_per_sec": setup.likelihood_batch / seconds,
        "seconds": seconds,
        "first_run_seconds": first,
        "peak_memory_gib": peak_memory_gib(device),
    }


def measured(measure: Callable[..., dict], device: torch.device, precision: str, compile: bool, **labels) -> dict:
    """One table row: the setting, its labels and ``measure(precision=, compile=, **labels)``; or ``skipped``,
    why the device cannot run the setting; or ``error``, the first line of what the measurement raised (out
    of memory, a compilation failure: the other settings still run)."""
    row = {"precision": precision, "compile": compile, **labels}
    reason = unsupported(precision, compile, device)
    if reason is not None:
        row["skipped"] = reason
    else:
        fresh_state(device)
        try:
            row.update(measure(precision=precision, compile=compile, **labels))
        except RuntimeError as err:  # torch's errors (OutOfMemoryError, Dynamo's and Inductor's) are RuntimeErrors
            traceback.print_exc()
            row["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0]}"
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def add_ratios(rows: list[dict], rate: str, same: tuple[str, ...] = ()) -> None:
    """``ratio_to_fp32_eager``: each row's ``rate`` over the fp32, compile=false row with the same ``same`` keys."""
    base = {tuple(r[k] for k in same): r.get(rate) for r in rows if r["precision"] == "fp32" and not r["compile"]}
    for r in rows:
        ref = base.get(tuple(r[k] for k in same))
        r["ratio_to_fp32_eager"] = r[rate] / ref if r.get(rate) and ref else None


def run(setup: Setup, device: torch.device) -> dict:
    """Every measurement of ``setup`` on ``device``: the three tables' rows and the network's size."""
    sde = sd.VPSDE()
    training = [measured(functools.partial(measure_training, setup, sde, device), device, p, c) for p, c in setup.settings]
    add_ratios(training, "images_per_sec")
    model = score_model(setup.net, sde).to(device).eval()
    sample = functools.partial(measure_sampling, model, setup, sde, device)
    sampling = [measured(sample, device, p, c, sampler=name) for p, c in setup.settings for name in SAMPLERS]
    add_ratios(sampling, "samples_per_sec", same=("sampler",))
    # eager only: the divergence's vmap'd vector-Jacobian products fail on a compiled graph (sde-eval refuses it)
    likelihood = [measured(functools.partial(measure_likelihood, model, setup, sde, device), device, "fp32", False)]
    add_ratios(likelihood, "points_per_sec")
    return {"parameters": sum(p.numel() for p in model.parameters()), "training": training, "sampling": sampling, "likelihood": likelihood}


# ---------------------------------------------------------------------------------- reporting
def column(key: str, spec: str) -> Callable[[dict], str]:
    return lambda row: "-" if row.get(key) is None else format(row[key], spec)


MEMORY = ("peak memory GiB", column("peak_memory_gib", ".2f"))
RATIO = ("vs fp32 eager", column("ratio_to_fp32_eager", ".2f"))
TRAINING_COLUMNS = [
    ("images/s", column("images_per_sec", ".1f")),
    RATIO,
    ("ms/step", column("ms_per_step", ".1f")),
    ("first step s", column("first_step_seconds", ".2f")),
    MEMORY,
]
SAMPLING_COLUMNS = [
    ("NFE", column("nfe", "d")),
    ("samples/s", column("samples_per_sec", ".1f")),
    RATIO,
    ("seconds", column("seconds", ".3f")),
    ("first run s", column("first_run_seconds", ".2f")),
    MEMORY,
]
LIKELIHOOD_COLUMNS = [
    ("NFE", column("nfe", "d")),
    ("points/s", column("points_per_sec", ".2f")),
    RATIO,
    ("seconds", column("seconds", ".2f")),
    ("first run s", column("first_run_seconds", ".2f")),
    MEMORY,
]


def table(rows: list[dict], columns: list[tuple[str, Callable[[dict], str]]], labels: tuple[str, ...] = ()) -> list[str]:
    """A markdown table: precision, compile and ``labels``, then ``columns``; a row not measured says why."""
    head = ["precision", "compile", *labels, *(name for name, _ in columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["precision"], str(r["compile"]).lower(), *(str(r[k]) for k in labels)]
        why = f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {r['error']}" if "error" in r else None
        cells += [why.replace("|", "/")] + ["-"] * (len(columns) - 1) if why else [f(r) for _, f in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict) -> str:
    s, net = result["setup"], result["setup"]["net"]
    title = "GPU throughput of the DDPM++-sized U-Net" + (" (quick smoke run: tiny U-Net)" if result["quick"] else "")
    size = ", ".join(f"{k} {v}" for k, v in net.items() if k != "data_shape")
    return "\n".join(
        [
            f"# {title}",
            "",
            f"Device: {result['device']} ({result['device_type']}); torch {result['torch']}, CUDA {result['cuda']}; "
            f"TF32 allowed: matmul {result['tf32']['matmul']}, cuDNN {result['tf32']['cudnn']}. U-Net ({size}) on "
            f"{'x'.join(map(str, net['data_shape']))} images, {result['parameters'] / 1e6:.1f}M parameters, eps parameterization, "
            f"VP SDE, fresh weights. {result['wall_seconds']:.0f} s wall.",
            "",
            "## Training",
            "",
            f"Trainer.train_step (Adam, grad clip 1, EMA; autocast and fp16's GradScaler are the Trainer's) on random images in [-1, 1], "
            f"batch {s['train_batch']}: warm-up steps {s['warmup']}, then {s['steps']} timed steps. First step s: the first step alone, "
            "mostly compilation under compile=true. Peak memory: torch.cuda.max_memory_allocated, reset per setting.",
            "",
            *table(result["training"], TRAINING_COLUMNS),
            "",
            "## Sampling",
            "",
            f"draw_samples, batch {s['sample_batch']}, network in eval mode wrapped by precision.accelerate: dpm_solver = DPM-Solver++(2M) "
            "on the log-SNR grid, heun = EDM's Heun sampler on EDM's rho = 7 grid, euler_maruyama on the uniform grid (conf/sampler/*.yaml); "
            f"steps {s['sampler_steps']}. Timed: the second of two identical runs (first run s: the first, with any compilation; Inductor's on-disk cache serves graphs already compiled in this run).",
            "",
            *table(result["sampling"], SAMPLING_COLUMNS, labels=("sampler",)),
            "",
            "## Likelihood",
            "",
            f"log_likelihood, dopri5 at rtol = atol = 1e-5, Hutchinson divergence with one Rademacher probe, {s['likelihood_batch']} random "
            f"images, after an untimed solve at rtol = atol = 1e-2 (first run s). {LIKELIHOOD_NOTE}.",
            "",
            *table(result["likelihood"], LIKELIHOOD_COLUMNS),
            "",
        ]
    )


# --------------------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu runs only with --quick (default cuda)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny U-Net on 3x8x8, 2 steps, fp32 and bf16, compile false")
    parser.add_argument("--batch-size", type=int, help=f"training batch (default {FULL.train_batch}; {QUICK.train_batch} with --quick)")
    parser.add_argument("--steps", type=int, help=f"timed training steps (default {FULL.steps}; {QUICK.steps} with --quick)")
    parser.add_argument(
        "--sample-batch-size", type=int, help=f"sampling batch (default {FULL.sample_batch}; {QUICK.sample_batch} with --quick)"
    )
    parser.add_argument(
        "--likelihood-batch-size",
        type=int,
        help=f"likelihood batch (default {FULL.likelihood_batch}; {QUICK.likelihood_batch} with --quick)",
    )
    parser.add_argument("--out", type=Path, help="folder for gpu.{json,md} (default benchmarks/results; with --quick a temporary folder)")
    args = parser.parse_args()
    if args.device == "cpu" and not args.quick:
        parser.error("--device cpu runs the --quick smoke run only; the full benchmark needs a CUDA device")
    return args


def setup_from(args: argparse.Namespace) -> Setup:
    """QUICK or FULL with the batch sizes and step count given on the command line."""
    base = QUICK if args.quick else FULL
    return dataclasses.replace(
        base,
        train_batch=args.batch_size or base.train_batch,
        steps=args.steps or base.steps,
        sample_batch=args.sample_batch_size or base.sample_batch,
        likelihood_batch=args.likelihood_batch_size or base.likelihood_batch,
    )


def main() -> None:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA)
        return
    if args.device == "cpu":
        torch.set_num_threads(1)
    device = torch.device(args.device)
    setup = setup_from(args)
    start = time.perf_counter()
    tables = run(setup, device)
    result = {
        "quick": args.quick,
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "setup": dataclasses.asdict(setup),
        "likelihood_note": LIKELIHOOD_NOTE,
        "wall_seconds": time.perf_counter() - start,
        **tables,
    }
    text = markdown(result)
    print(text)
    out = args.out or (Path(tempfile.gettempdir()) / "gpu_quick" if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "gpu.md").write_text(text)
    print(f"wrote {out / 'gpu.json'} and {out / 'gpu.md'}")


if __name__ == "__main__":
    main()
