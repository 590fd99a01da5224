"""Mean negative log-likelihood of a data set with standard errors: the evaluation behind ``sde-eval``
and the held-out NLL of ``sde-train``; the exact NLL of the probability-flow ODE's model, or an upper
bound on the NLL of the diffusion model itself (the reverse SDE or DDPM's chain) by the
continuous-time ELBO or DDPM's VLB (``bound``, :mod:`.bounds`), with the same per-point bookkeeping.
These are two different models sharing one score network (Song, Durkan, Murray & Ermon 2021,
Thm. 1 bounds the reverse SDE's ``p^SDE``; the ODE gives ``p^ODE`` exactly), so neither number
bounds the other: the ELBO may come out below the ODE's NLL (``BOUND_MEANINGS``).

Each point ``x_i`` gets one number, its NLL per dimension averaged over the randomness spent on it:

    nll_i = mean_{j, p} ( -log p(y_ij; v_ijp) / D ),

over ``n_dequant`` dequantization draws ``y_ij`` (discrete data; ``y_i1 = x_i`` otherwise) and
``n_probes`` Hutchinson probes ``v`` (one "probe", the exact trace, for the exact divergence). The
reported value is ``mean_i nll_i`` and its standard error is ``std_i(nll_i) / sqrt(n)`` (unbiased
std over the ``n`` points). Points are i.i.d. and each carries its own independent draws, so the
``nll_i`` are i.i.d. and this one standard error covers the variation over points, probes and
dequantization draws together.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._checks import check_range
from .._seeding import derive_seed
from .._shapes import check_data, flat_dim
from ..data.dataset import Density
from ..distributed import SINGLE, DistributedContext, all_gather_objects
from ..losses.proposals import discrete_chain
from ..sdes.base import SDE
from ..types import ScoreFn
from .bits import nats_per_dim
from .estimators import (
    BOUND_MEANINGS,
    EXACT_DIVERGENCE_MAX_DIM,
    ContinuousELBO,
    DiscreteData,
    DiscreteVLB,
    LatentBound,
    NLLBound,
    ODELikelihood,
    resolve_divergence,
    resolve_variance,
)

__all__ = ["evaluate_nll", "make_bound", "BOUNDS", "BOUND_MEANINGS", "EXACT_DIVERGENCE_MAX_DIM", "resolve_divergence", "resolve_variance"]

BOUNDS = ("ode", "vlb", "elbo", "elbo_dequantized", "latent")
"""The names :func:`evaluate_nll` (and :func:`make_bound`) take for ``bound``: the probability-flow
ODE's exact NLL (:class:`~.estimators.ODELikelihood`), DDPM's discrete VLB
(:class:`~.estimators.DiscreteVLB`), the continuous-time ELBO (:class:`~.estimators.ContinuousELBO`)
with the discretized decoder on discrete data (``elbo``) or the Gaussian decoder on dequantized data
(``elbo_dequantized``), or LSGM's bound of a latent diffusion model (``latent``,
:class:`~.estimators.LatentBound`)."""


def _mean_and_stderr(values: Tensor) -> tuple[float, float | None]:
    """Mean of ``(n,)`` per-point values and its standard error ``std / sqrt(n)`` (None for ``n = 1``)."""
    mean = values.mean().item()
    if values.numel() < 2:
        return mean, None
    return mean, (values.std() / math.sqrt(values.numel())).item()


def _check_counts(n_points, batch_size, n_dequant, seed, levels) -> None:
    for name, value in (("batch_size", batch_size), ("n_dequant", n_dequant)):
        check_range(name, value, low=1, integer=True)
    check_range("seed", seed, low=0, integer=True)
    check_range("n_points", n_points, low=1, integer=True, optional=True, hint="null evaluates all points")
    if levels is None and n_dequant != 1:
        raise ValueError(
            f"n_dequant={n_dequant} applies to discrete data only (levels and interval_width set); "
            f"continuous data are evaluated as they are, leave n_dequant=1"
        )


def evaluate_nll(
    sde: SDE,
    score_fn: ScoreFn,
    data: Tensor,
    *,
    levels: int | None = None,
    interval_width: float | None = None,
    n_points: int | None = None,
    batch_size: int = 1000,
    divergence: str = "auto",
    n_probes: int = 1,
    probe: str = "rademacher",
    n_dequant: int = 1,
    eps: float = 1e-5,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    backend: str = "torchdiffeq",
    seed: int = 0,
    density: Density | Callable[[Tensor], Tensor] | None = None,
    progress: bool = False,
    shard: DistributedContext = SINGLE,
    bound: str | NLLBound = "ode",
    variance: str = "auto",
    n_terms: int | None = None,
    n_time_samples: int = 32,
    elbo_eps: float | str = "auto",
    codec=None,
    time_variable: str = "t",
) -> dict:
    """Mean NLL in nats per dimension (and bits per dimension for discrete data) of ``data``, or an
    upper bound on it, by ``bound``, with standard errors (module docstring).

    One loop for every bound: batch ``b`` is one call of ``bound.batch_nll``
    (:class:`~sde_diffusion.likelihood.estimators.NLLBound`) with its own generator, sharded over
    processes and gathered; the bound's ``"auto"`` options are resolved first for the model and data.
    With the default ``bound="ode"`` every batch is one
    :func:`~sde_diffusion.likelihood.log_likelihood` solve (Song et al. 2021, App. D), so the NLL
    refers to the model's marginal at ``t = eps`` with the prior as ``p_T``.

    Args:
        sde, score_fn: the model; ``score_fn(x, t)`` on ``data``'s device and dtype.
        data: ``(N, *dims)`` points; the first ``n_points`` are evaluated (all when None), in
            batches of ``batch_size`` points.
        levels, interval_width: for discrete data, ``K`` levels per dimension spread over an
            interval of width ``w`` (as in :class:`~sde_diffusion.data.Dataset`). A bound that
            dequantizes (the ODE's, ``elbo_dequantized``) draws ``n_dequant`` times per point,
            ``y = x + u w / K`` with ``u ~ U[0, 1)^D``, and reports
            ``bpd = (-log p(y) / D + log(K / w)) / ln 2`` (docs/references.md, bits per dimension); the
            others score the data as they are (``n_dequant`` must be 1). The points must
            lie on one grid of spacing ``w / K`` (checked); its origin is taken to be the smallest
            value evaluated, which is a level (dequantization does not depend on the origin).
        seed: batch ``b`` (of ``batch_size`` points) draws its probes and dequantization noise from a
            generator seeded ``derive_seed(seed, b)``: the draws depend on ``seed`` and
            ``batch_size``, never on which process solves the batch.
        density: the data's exact density, when known: an object with ``log_prob(x)``
            (``Dataset.distribution``, :class:`~sde_diffusion.data.GaussianMixture`, a
            ``torch.distributions`` distribution over ``D``-vectors...; preferred when present) or a
            plain callable ``x -> log p(x)``; given ``x`` ``(B, *dims)`` (float64, on the CPU) it
            returns ``(B,)`` log-densities in nats, one per point (summed over the dimensions; a
            wrong shape is refused before any solve). Adds the exact NLL of the same points
            (``data_nll_nats_per_dim``, divided by ``D`` like the model's), the entropy estimate
            the model's NLL should approach.
        progress: show a progress bar over points.
        shard: under torch.distributed, process ``r`` of ``W`` solves batches ``r, r + W, ...`` and
            the per-point results are gathered once at the end (no collective during the adaptive
            solves, whose step counts differ between processes), so every process returns the
            numbers one process would.
        bound: an :class:`~sde_diffusion.likelihood.estimators.NLLBound`
            (:class:`~sde_diffusion.likelihood.ODELikelihood`, :class:`~sde_diffusion.likelihood.DiscreteVLB`,
            :class:`~sde_diffusion.likelihood.ContinuousELBO`, :class:`~sde_diffusion.likelihood.LatentBound`),
            which holds its own options (the keyword options below then keep their defaults); or its name (:data:`BOUNDS`), built with the keyword options
            below by :func:`make_bound`: ``"ode"`` (the exact NLL of the probability-flow ODE), ``"vlb"``
            (DDPM's discrete variational bound of a discrete-time SDE), ``"elbo"`` (the continuous-time
            bound; on discrete data with the decoder discretized to the levels, like the VLB),
            ``"elbo_dequantized"`` (the same bound with the Gaussian decoder on dequantized data, as
            the ODE sees them) or ``"latent"`` (LSGM's bound, with ``codec``).
        divergence, n_probes, probe, eps, method, rtol, atol, backend, time_variable: the ODE's
            (``bound="ode"`` and ``"latent"``; :class:`~sde_diffusion.likelihood.ODELikelihood`);
            ``eps`` is also the ELBO's earliest time.
        variance, n_terms: the VLB's (:class:`~sde_diffusion.likelihood.DiscreteVLB`).
        n_time_samples, elbo_eps: the ELBO's (:class:`~sde_diffusion.likelihood.ContinuousELBO`).
        codec: for ``bound="latent"`` (and only then), the latent diffusion model's
            :class:`~sde_diffusion.latents.LatentCodec`; ``data`` are then the images, ``score_fn``
            and ``sde`` the model on the codec's latents, and ``divergence`` is resolved for the
            latents' dimension. One latent draw per point (and per batch seed).
    Returns: a JSON-ready dict: ``bound`` (its name), ``measures`` (what the number is an NLL or a bound of,
        ``BOUND_MEANINGS``: the ODE's and the bounds' are different models), the bound's settings
        (resolved: ``divergence`` and the solve's options of the ODE bounds, None for the others;
        ``variance`` and ``n_terms`` of the VLB; ``n_time_samples`` and ``elbo_eps`` of the ELBO),
        ``n_points``, ``dim`` (``D``),
        ``nll_nats_per_dim`` and ``nll_stderr``; ``bpd`` and ``bpd_stderr`` (None for continuous
        data); ``data_nll_nats_per_dim`` and ``data_nll_stderr`` (None without ``density``);
        ``nfe`` (score evaluations per solve, averaged over batches), ``nfe_total``,
        ``n_solves`` and ``seconds`` (wall time of the solves, the gathering included);
        ``terms_nats_per_dim`` (latent: the means of ``-log p(x|z)``, ``log q(z|x)`` and ``-log p(z)``
        per image dimension). Standard errors are None for one point.
    """
    check_data(data, "data")
    if (levels is None) != (interval_width is None):
        raise ValueError("levels and interval_width describe discrete data together: give both or neither")
    _check_counts(n_points, batch_size, n_dequant, seed, levels)
    options = dict(variance=variance, n_terms=n_terms, n_time_samples=n_time_samples, elbo_eps=elbo_eps, codec=codec, eps=eps,
                   method=method, rtol=rtol, atol=atol, divergence=divergence, n_probes=n_probes, probe=probe, backend=backend,
                   time_variable=time_variable)  # fmt: skip
    if isinstance(bound, str):
        bound = make_bound(bound, **options)
    elif changed := [k for k, v in options.items() if v != _BOUND_DEFAULTS[k]]:
        raise ValueError(f"{', '.join(changed)}: options of the bound by name; a bound object ({type(bound).__name__}) holds its own")
    if levels is not None and n_dequant != 1 and not bound.dequantizes:
        raise ValueError(
            f"bound={bound.name} scores the discrete data as they are (its decoder discretized to their levels), "
            f"without dequantization: leave n_dequant=1"
        )
    if bound.needs_discrete_chain:
        discrete_chain(sde, f"the {bound.title} (bound={bound.name})")
    if n_points is not None and n_points > data.shape[0]:
        raise ValueError(f"n_points={n_points} but the data hold {data.shape[0]} points; lower n_points or use null for all")
    x_all = data if n_points is None else data[:n_points]
    dim = flat_dim(x_all)
    # levels and interval_width are both given or both None (checked above)
    discrete = None if levels is None or interval_width is None else DiscreteData(levels, x_all.min().item(), interval_width, n_dequant)
    bound = bound.resolve(sde, score_fn, dim, discrete)
    data_logp = None if density is None else _density_log_prob(density, x_all.cpu().double())
    sizes = [len(x) for x in x_all.split(batch_size)]
    batches = list(enumerate(x_all.split(batch_size)))[shard.rank :: shard.world_size]
    mine: dict[int, tuple] = {}
    start = time.perf_counter()
    # the main process's bar counts the whole job's points: when it finishes its batch b, the
    # other processes finish batches b + 1 .. b + world_size - 1 (equal shares, run in lockstep)
    with tqdm(total=len(x_all), disable=not (progress and shard.is_main), desc="NLL", unit="pt", leave=False) as bar:
        for b, x in batches:
            generator = torch.Generator(device=x.device).manual_seed(derive_seed(seed, b))
            out = bound.batch_nll(sde, score_fn, x, generator, discrete)
            mine[b] = (out.nll.cpu(), None if out.bpd is None else out.bpd.cpu(), out.nfe, out.parts)
            bar.update(sum(sizes[b : b + shard.world_size]))
            bar.set_postfix(nll=f"{torch.cat([v[0] for v in mine.values()]).mean().item():.4f}", nfe=out.nfe)
    merged = {b: v for part in all_gather_objects(mine, shard) for b, v in part.items()}
    seconds = time.perf_counter() - start
    ordered = [merged[b] for b in sorted(merged)]
    nll = [v[0] for v in ordered]
    bpd = [v[1] for v in ordered if v[1] is not None]
    nfe = [v[2] for v in ordered]

    nll_mean, nll_se = _mean_and_stderr(torch.cat(nll))
    bpd_mean, bpd_se = _mean_and_stderr(torch.cat(bpd)) if bpd else (None, None)
    data_mean, data_se = _mean_and_stderr(nats_per_dim(data_logp, dim)) if data_logp is not None else (None, None)
    parts = [v[3] for v in ordered if v[3] is not None]
    terms = {"terms_nats_per_dim": {k: torch.cat([p[k] for p in parts]).mean().item() for k in parts[0]}} if parts else {}
    return {
        "bound": bound.name,
        "measures": bound.measures,
        "divergence": None,  # the ODE bounds' settings hold the one they solved with
        **bound.settings(),
        **terms,
        "n_points": int(x_all.shape[0]),
        "dim": dim,
        "nll_nats_per_dim": nll_mean,
        "nll_stderr": nll_se,
        "bpd": bpd_mean,
        "bpd_stderr": bpd_se,
        "data_nll_nats_per_dim": data_mean,
        "data_nll_stderr": data_se,
        "nfe": sum(nfe) / len(nfe),
        "nfe_total": sum(nfe),
        "n_solves": len(nfe),
        "seconds": seconds,
    }


_BOUND_DEFAULTS = {
    name: inspect.signature(evaluate_nll).parameters[name].default
    for name in ("variance", "n_terms", "n_time_samples", "elbo_eps", "codec", "eps", "method", "rtol", "atol", "divergence",
                 "n_probes", "probe", "backend", "time_variable")
}  # fmt: skip
""":func:`make_bound`'s keyword options, :func:`evaluate_nll`'s for a bound by name, and their defaults."""


def make_bound(bound: str, **options) -> NLLBound:
    """The bound object :func:`evaluate_nll` builds from ``bound``'s name (:data:`BOUNDS`) and its
    keyword options (``variance``, ``n_terms``, ``n_time_samples``, ``elbo_eps``, ``codec``, ``eps``,
    ``method``, ``rtol``, ``atol``, ``divergence``, ``n_probes``, ``probe``, ``backend``,
    ``time_variable``; defaults as there): each kind takes its own and leaves the others."""
    if bound not in BOUNDS:
        raise ValueError(
            f"bound must be one of {BOUNDS} (ode: exact NLL; vlb: DDPM's bound; elbo: the continuous-time bound), got {bound!r}"
        )
    if unknown := sorted(set(options) - set(_BOUND_DEFAULTS)):
        raise TypeError(f"make_bound() got unknown options {unknown}; it takes {sorted(_BOUND_DEFAULTS)}")
    o = {**_BOUND_DEFAULTS, **options}
    if (bound == "latent") != (o["codec"] is not None):
        raise ValueError("bound='latent' (LSGM's bound of a latent diffusion model) and codec go together: give both or neither")
    if bound in ("ode", "latent"):
        ode = ODELikelihood(**{f.name: o[f.name] for f in dataclasses.fields(ODELikelihood)})
        return ode if bound == "ode" else LatentBound(ode, o["codec"])
    if o["time_variable"] != "t":
        raise ValueError(
            f"time_variable={o['time_variable']} is the ODE solve's variable (bound=ode or latent); bound={bound} solves no ODE"
        )
    if bound == "vlb":
        return DiscreteVLB(variance=o["variance"], n_terms=o["n_terms"])
    decoder = "discretized" if bound == "elbo" else "gaussian"
    return ContinuousELBO(n_time_samples=o["n_time_samples"], elbo_eps=o["elbo_eps"], eps=o["eps"], decoder=decoder)


def _density_log_prob(density, x: Tensor) -> Tensor:
    """``log p(x)`` ``(B,)`` in nats of ``density`` (``evaluate_nll``'s argument) at ``x`` ``(B, *dims)``."""
    log_prob = getattr(density, "log_prob", density)
    if not callable(log_prob):
        raise ValueError(
            f"density must have log_prob(x) or be a callable x -> log p(x), got {type(density).__name__}; pass e.g. lambda x: my_log_p(x)"
        )
    logp = torch.as_tensor(log_prob(x))
    if logp.shape != (x.shape[0],):
        raise ValueError(
            f"density's log p(x) must have shape ({x.shape[0]},), one value in nats per point of x {tuple(x.shape)}, "
            f"got {tuple(logp.shape)}; sum the log-density over each point's dimensions"
        )
    return logp
