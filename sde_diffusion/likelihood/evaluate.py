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
from ..sdes.base import SDE
from ..types import ScoreFn
from .bits import bits_per_dim, dequantization_offset, dequantize, nats_per_dim
from .bounds import continuous_elbo, discrete_vlb
from .latent import latent_bound
from .ode import DIVERGENCES, TIME_VARIABLES, log_likelihood

BOUNDS = ("ode", "vlb", "elbo", "elbo_dequantized", "latent")
"""What :func:`evaluate_nll` computes: the probability-flow ODE's exact NLL, DDPM's discrete VLB,
or the continuous-time ELBO (:mod:`.bounds`): with the discretized decoder on discrete data
(``elbo``), or with the Gaussian decoder on dequantized data (``elbo_dequantized``); or, for a
latent diffusion model, LSGM's bound on the images' NLL (``latent``, :mod:`.latent`)."""

BOUND_MEANINGS = {
    "ode": "the exact NLL of the probability-flow ODE's model, which is not the reverse-SDE model that bound=elbo/vlb bound",
    "vlb": "an upper bound on the NLL of DDPM's discrete reverse chain (the ancestral sampler), not a bound on the ODE's NLL",
    "elbo": "an upper bound on the NLL of the reverse-SDE (diffusion) model, not a bound on the ODE's NLL",
    "elbo_dequantized": "an upper bound on the NLL of the reverse-SDE (diffusion) model of dequantized data, not a bound on the ODE's NLL",
    "latent": "an upper bound on the NLL of the latent diffusion model (the decoder over the probability-flow ODE's prior on latents)",
}
"""What each bound is a number of, stored as ``measures`` in :func:`evaluate_nll`'s result and
printed by ``sde-eval``. The ODE's density ``p^ODE`` and the reverse SDE's (or discrete chain's)
``p^SDE`` are different models built from one score network: the ELBO and the VLB bound
``-log p^SDE`` (Song, Durkan, Murray & Ermon 2021, Thm. 1; Ho et al. 2020, Eq. 5) and the ODE gives
``-log p^ODE`` exactly (Song et al. 2021, App. D), so neither bounds the other. They agree only when
the score is exact, where both models have the same marginals."""


def resolve_variance(variance: str, score_fn) -> str:
    """``"auto"``: ``"learned"`` for a model with learned variances (``score_fn.learns_variance``),
    else ``"small"`` (``beta_tilde``); other values pass through."""
    if variance != "auto":
        return variance
    return "learned" if getattr(score_fn, "learns_variance", False) else "small"


EXACT_DIVERGENCE_MAX_DIM = 16
"""``divergence="auto"`` takes the exact trace up to this many dimensions, Hutchinson above."""


def resolve_divergence(divergence: str, dim: int) -> str:
    """``"auto"`` becomes ``"exact"`` for ``D <= 16`` (``D`` backward passes per evaluation are
    cheap there) and ``"hutchinson"`` above; other values pass through unchanged."""
    if divergence != "auto":
        return divergence
    return "exact" if dim <= EXACT_DIVERGENCE_MAX_DIM else "hutchinson"


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
    bound: str = "ode",
    variance: str = "auto",
    n_terms: int | None = None,
    n_time_samples: int = 32,
    elbo_eps: float | str = "auto",
    codec=None,
    time_variable: str = "t",
) -> dict:
    """Mean NLL in nats per dimension (and bits per dimension for discrete data) of ``data`` under
    the probability-flow ODE of ``sde`` and ``score_fn``, with standard errors (module docstring).

    Every batch is one :func:`~sde_diffusion.likelihood.log_likelihood` solve (Song et al. 2021,
    App. D), so the NLL refers to the model's marginal at ``t = eps`` with the prior as ``p_T``.

    Args:
        sde, score_fn: the model; ``score_fn(x, t)`` on ``data``'s device and dtype.
        data: ``(N, *dims)`` points; the first ``n_points`` are evaluated (all when None), in
            batches of ``batch_size`` points.
        levels, interval_width: for discrete data, ``K`` levels per dimension spread over an
            interval of width ``w`` (as in :class:`~sde_diffusion.data.Dataset`). Each point is
            dequantized ``n_dequant`` times, ``y = x + u w / K`` with ``u ~ U[0, 1)^D``, and
            ``bpd = (-log p(y) / D + log(K / w)) / ln 2`` (docs/references.md, bits per dimension). The points must
            lie on one grid of spacing ``w / K`` (checked); its origin is taken to be the smallest
            value evaluated, which is a level (dequantization does not depend on the origin).
        divergence: ``"exact"``, ``"hutchinson"`` or ``"auto"`` (exact for ``D <= 16``).
        n_probes, probe: Hutchinson probes per point and their distribution; the exact divergence
            (also when ``"auto"`` chooses it) needs ``n_probes=1``.
        eps, method, rtol, atol, backend, time_variable: passed to ``log_likelihood`` (``bound="ode"``
            and ``"latent"``; ``time_variable`` is ``"t"``, ``"log_snr"`` or ``"sigma"``).
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
        bound: ``"ode"`` (the exact NLL of the probability-flow ODE), ``"vlb"`` (DDPM's discrete
            variational bound of a discrete-time SDE, :func:`~sde_diffusion.likelihood.discrete_vlb`:
            ``-log P(x)`` of the data on their ``levels`` by the discretized decoder, no
            dequantization, so ``n_dequant`` must be 1), ``"elbo"`` (the continuous-time bound,
            :func:`~sde_diffusion.likelihood.continuous_elbo`; on discrete data with the decoder
            discretized to the levels, like the VLB) or ``"elbo_dequantized"`` (the same bound with
            the Gaussian decoder on dequantized data, as the ODE sees them). For the bounds that
            score discrete data as they are, ``nll_nats_per_dim`` is that of the density
            ``P(x) / (w / K)^D`` on the bins, ``bpd - log2(K / w)`` in nats: one scale for all.
        variance: the VLB's reverse variances: ``"auto"`` (learned when the model learned them,
            else ``"small"``), ``"small"``, ``"large"`` or ``"learned"``.
        n_terms: the VLB's steps per point: None for all ``T``, else the unbiased stratified estimate.
        n_time_samples: the ELBO's network calls per point.
        codec: for ``bound="latent"`` (and only then), the latent diffusion model's
            :class:`~sde_diffusion.latents.LatentCodec`; ``data`` are then the images, ``score_fn``
            and ``sde`` the model on the codec's latents, and ``divergence`` is resolved for the
            latents' dimension. One latent draw per point (and per batch seed).
        elbo_eps: the ELBO's decoder time: a number, or ``"auto"``: for ``bound="elbo"`` on data on
            ``K`` levels the time where ``s(t) / m(t) = w / (3 K)``, a third of a bin (on the 600-step
            digits VP model: 2.16 bits/dim there, against 6.61 at ``eps = 1e-5``, where the barely
            trained small-noise scores dominate; 2.22 at ``w / 1.5 K``, 2.51 at ``w / 6 K``), else ``eps``.
    Returns: a JSON-ready dict: ``bound``, ``measures`` (what the number is an NLL or a bound of,
        ``BOUND_MEANINGS``: the ODE's and the bounds' are different models), ``n_points``, ``dim`` (``D``), ``divergence`` (resolved),
        ``nll_nats_per_dim`` and ``nll_stderr``; ``bpd`` and ``bpd_stderr`` (None for continuous
        data); ``data_nll_nats_per_dim`` and ``data_nll_stderr`` (None without ``density``);
        ``nfe`` (score evaluations per solve, averaged over batches), ``nfe_total``,
        ``n_solves`` and ``seconds`` (wall time of the solves, the gathering included); ``variance``,
        ``n_terms`` (vlb), ``n_time_samples`` and the resolved ``elbo_eps`` (elbo) for the bounds;
        ``terms_nats_per_dim`` (latent: the means of ``-log p(x|z)``, ``log q(z|x)`` and ``-log p(z)``
        per image dimension). Standard errors are None for one point.
    """
    check_data(data, "data")
    if divergence not in ("auto", *DIVERGENCES):
        raise ValueError(f"divergence must be 'auto' or one of {DIVERGENCES}, got {divergence!r}")
    if (levels is None) != (interval_width is None):
        raise ValueError("levels and interval_width describe discrete data together: give both or neither")
    _check_counts(n_points, batch_size, n_dequant, seed, levels)
    if bound not in BOUNDS:
        raise ValueError(
            f"bound must be one of {BOUNDS} (ode: exact NLL; vlb: DDPM's bound; elbo: the continuous-time bound), got {bound!r}"
        )
    if bound in ("vlb", "elbo") and levels is not None and n_dequant != 1:
        raise ValueError(
            f"bound={bound} scores the discrete data themselves (the discretized decoder), without dequantization: leave n_dequant=1"
        )
    if (bound == "latent") != (codec is not None):
        raise ValueError("bound='latent' (LSGM's bound of a latent diffusion model) and codec go together: give both or neither")
    if bound == "latent" and n_dequant != 1:
        raise ValueError("bound='latent' scores the images as they are (the decoder is discretized to their levels): leave n_dequant=1")
    if time_variable not in TIME_VARIABLES:
        raise ValueError(f"time_variable must be one of {TIME_VARIABLES}, got {time_variable!r}")
    if time_variable != "t" and bound not in ("ode", "latent"):
        raise ValueError(f"time_variable={time_variable} is the ODE solve's variable (bound=ode or latent); bound={bound} solves no ODE")
    variance = resolve_variance(variance, score_fn)
    elbo_eps = _resolve_elbo_eps(elbo_eps, bound, sde, eps, levels, interval_width)
    if n_points is not None and n_points > data.shape[0]:
        raise ValueError(f"n_points={n_points} but the data hold {data.shape[0]} points; lower n_points or use null for all")
    x_all = data if n_points is None else data[:n_points]
    dim = flat_dim(x_all)
    divergence = resolve_divergence(divergence, codec.dims if codec is not None else dim)
    # levels and interval_width are both given or both None (checked above); so are levels and interval
    interval: tuple[float, float] | None = None
    if levels is not None and interval_width is not None:
        interval = (x_all.min().item(), x_all.min().item() + interval_width)
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
            parts_b = None
            if bound == "latent":
                terms, nfe_b = latent_bound(
                    codec, sde, score_fn, x, generator=generator, eps=eps, method=method, rtol=rtol, atol=atol,
                    divergence=divergence, n_probes=n_probes, probe=probe, backend=backend, time_variable=time_variable,
                )  # fmt: skip
                nll_b, bpd_b = _per_dim(terms["nll"], dim, levels, interval, x.dtype)
                parts_b = {k: (terms[k] / dim).cpu() for k in ("reconstruction", "log_q", "prior_nll")}
            elif bound == "vlb" or (bound == "elbo" and levels is not None):
                nll_b, bpd_b, nfe_b = _discrete_bound_batch(
                    bound, sde, score_fn, x, dim, levels, interval, variance, n_terms, elbo_eps, n_time_samples, generator
                )
            else:
                y = x if levels is None or interval is None else dequantize(x, levels, interval, n_dequant=n_dequant, generator=generator)
                if bound in ("elbo", "elbo_dequantized"):
                    logp, nfe_b = (
                        -continuous_elbo(score_fn, sde, y, eps=elbo_eps, n_time_samples=n_time_samples, generator=generator),
                        n_time_samples,
                    )
                else:
                    out = log_likelihood(
                        sde,
                        score_fn,
                        y,
                        eps=eps,
                        method=method,
                        rtol=rtol,
                        atol=atol,
                        divergence=divergence,
                        n_probes=n_probes,
                        probe=probe,
                        backend=backend,
                        generator=generator,
                        time_variable=time_variable,
                    )
                    logp, nfe_b = out.logp, out.nfe
                nll_b = nats_per_dim(logp, dim).reshape(n_dequant, -1).mean(0)  # draw-major rows
                bpd_b = None if levels is None or interval is None else bits_per_dim(logp, dim, levels, interval, n_dequant=n_dequant)
            mine[b] = (nll_b.cpu(), None if bpd_b is None else bpd_b.cpu(), nfe_b, parts_b)
            bar.update(sum(sizes[b : b + shard.world_size]))
            bar.set_postfix(nll=f"{torch.cat([v[0] for v in mine.values()]).mean().item():.4f}", nfe=nfe_b)
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
    extra: dict = (
        {"terms_nats_per_dim": {k: torch.cat([p[k] for p in parts]).mean().item() for k in parts[0]}}
        if parts
        else {"variance": variance, "n_terms": n_terms}
        if bound == "vlb"
        else {"n_time_samples": n_time_samples, "elbo_eps": elbo_eps}
        if bound.startswith("elbo")
        else {}
    )
    return {
        "bound": bound,
        "measures": BOUND_MEANINGS[bound],
        **extra,
        "n_points": int(x_all.shape[0]),
        "dim": dim,
        "divergence": divergence,
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


def _resolve_elbo_eps(elbo_eps, bound: str, sde: SDE, eps: float, levels, interval_width) -> float:
    """The ELBO's decoder time (see :func:`evaluate_nll`'s ``elbo_eps``)."""
    if elbo_eps != "auto":
        if isinstance(elbo_eps, bool) or not isinstance(elbo_eps, (int, float)):
            raise ValueError(f"elbo_eps must be a time in (0, T) or 'auto', got {elbo_eps!r}")
        return float(elbo_eps)
    if bound != "elbo" or levels is None or not sde.has_kernel:
        return eps
    third_of_a_bin = interval_width / (3 * levels)  # s / m there, so log-SNR = -2 log(third)
    return float(sde.time_from_log_snr(torch.tensor(-2.0 * math.log(third_of_a_bin), dtype=torch.float64), eps))


def _discrete_bound_batch(
    bound, sde, score_fn, x, dim, levels, interval, variance, n_terms, eps, n_time_samples, generator
) -> tuple[Tensor, Tensor | None, int]:
    """Per-point ``(nll nats/dim, bpd or None, NFE)`` of one batch by a bound that scores the data as
    they are (the VLB, or the ELBO with the discretized decoder): ``-log P`` of discrete data
    (``bpd``) and its density on the bins, ``bpd ln 2 - log(K / w)``; continuous data (the VLB's
    Gaussian decoder) give a density bound directly."""
    if bound == "vlb":
        span = interval or (-1.0, 1.0)
        total = discrete_vlb(score_fn, sde, x, variance=variance, levels=levels, interval=span, n_terms=n_terms, generator=generator)
        nfe = sde.discrete.T if n_terms is None else int(n_terms)
    else:
        total = continuous_elbo(
            score_fn, sde, x, eps=eps, n_time_samples=n_time_samples, levels=levels, interval=interval, generator=generator
        )
        nfe = int(n_time_samples)
    return (*_per_dim(total, dim, levels, interval, x.dtype), nfe)


def _per_dim(total: Tensor, dim: int, levels, interval, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """``(nll nats/dim, bpd or None)`` of a per-point bound ``total`` in nats on data scored as they
    are: on discrete data ``-log P`` (``bpd``) and its density on the bins, ``bpd ln 2 - log(K / w)``;
    on continuous data a density bound."""
    if levels is None or interval is None:
        return (total / dim).to(dtype), None
    bpd = total / (dim * math.log(2.0))
    return ((bpd - dequantization_offset(levels, interval)) * math.log(2.0)).to(dtype), bpd.to(dtype)
