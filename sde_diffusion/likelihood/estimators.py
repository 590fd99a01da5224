"""What :func:`~sde_diffusion.likelihood.evaluate_nll` computes for a batch, one object per kind of
number: the exact NLL of the probability-flow ODE's model (:class:`ODELikelihood`, Song et al. 2021,
App. D), DDPM's discrete VLB (:class:`DiscreteVLB`, Ho et al. 2020, Eq. 5), the continuous-time ELBO
(:class:`ContinuousELBO`, Kingma et al. 2021, Eq. 17) and LSGM's bound of a latent diffusion model
(:class:`LatentBound`, Vahdat et al. 2021, Eq. 2).

Each object holds its own options (checked when it is built), states what it needs as attributes
(``needs_fp32`` and ``needs_eager``: an adaptive ODE solve, which the apps read to refuse bf16 and
compiled networks; ``needs_discrete_chain``: a discrete-time SDE; ``dequantizes``: whether it scores
dequantized draws of discrete data or the data as they are; ``needs_codec``: images under a latent
codec), says what its number is of (``measures``, :data:`BOUND_MEANINGS`), and computes one batch's
per-point NLL in :meth:`NLLBound.batch_nll`. The ODE's density ``p^ODE`` and the reverse SDE's (or
discrete chain's) ``p^SDE`` are different models built from one score network: the ELBO and the VLB
bound ``-log p^SDE`` (Song, Durkan, Murray & Ermon 2021, Thm. 1), the ODE gives ``-log p^ODE``
exactly, so neither bounds the other; they agree only when the score is exact.

Units, for a batch ``x`` ``(B, *dims)`` of ``D`` dimensions: ``nll`` in nats per dimension, ``bpd``
in bits per dimension on discrete data (``K`` levels on an interval of width ``w``, :mod:`.bits`).
A bound that dequantizes averages ``-log p(y) / D`` over its draws ``y`` and reports
``bpd = (-log p(y) / D + log(K / w)) / ln 2``; one that scores discrete data as they are bounds
``-log P(x)`` directly (``bpd = -log P(x) / (D ln 2)``) and reports the density ``P(x) / (w / K)^D``
on the bins, ``bpd ln 2 - log(K / w)`` nats per dimension: one scale for all.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._checks import check_range
from .._shapes import flat_dim
from ..losses.vlb import VARIANCES
from ..sdes.base import SDE
from ..types import ScoreFn
from .bits import bits_per_dim, dequantization_offset, dequantize, nats_per_dim
from .bounds import continuous_elbo, discrete_vlb
from .latent import latent_bound
from .ode import DIVERGENCES, check_exact_probes, check_solve_options, log_likelihood

EXACT_DIVERGENCE_MAX_DIM = 16
"""``divergence="auto"`` takes the exact trace up to this many dimensions, Hutchinson above."""


def resolve_divergence(divergence: str, dim: int) -> str:
    """``"auto"`` becomes ``"exact"`` for ``D <= 16`` (``D`` backward passes per evaluation are
    cheap there) and ``"hutchinson"`` above; other values pass through unchanged."""
    if divergence != "auto":
        return divergence
    return "exact" if dim <= EXACT_DIVERGENCE_MAX_DIM else "hutchinson"


def resolve_variance(variance: str, score_fn) -> str:
    """``"auto"``: ``"learned"`` for a model with learned variances (``score_fn.learns_variance``),
    else ``"small"`` (``beta_tilde``); other values pass through."""
    if variance != "auto":
        return variance
    return "learned" if getattr(score_fn, "learns_variance", False) else "small"


@dataclass(frozen=True)
class DiscreteData:
    """Data on ``levels`` levels per dimension spread over ``[low, low + width)`` (the left bin edges
    of :mod:`.bits`), and ``n_dequant``, the dequantization draws per point of a bound that dequantizes."""

    levels: int
    low: float
    width: float
    n_dequant: int = 1

    @property
    def interval(self) -> tuple[float, float]:
        return (self.low, self.low + self.width)


@dataclass
class BatchNLL:
    """One batch's numbers: ``nll`` ``(B,)`` nats per dimension, ``bpd`` ``(B,)`` bits per dimension
    (None for continuous data), ``nfe`` score evaluations (per solve or per point, ``nfe_per``) and
    ``parts``, a bound's terms ``(B,)`` in nats per dimension (None where it has none)."""

    nll: Tensor
    bpd: Tensor | None
    nfe: int
    parts: dict[str, Tensor] | None = None


def _as_scored(total: Tensor, dim: int, data: DiscreteData | None, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """``(nll nats/dim, bpd or None)`` of a per-point bound ``total`` ``(B,)`` in nats on data scored
    as they are: on discrete data ``-log P`` (``bpd``) and its density on the bins (module docstring);
    on continuous data a density bound."""
    if data is None:
        return (total / dim).to(dtype), None
    bpd = total / (dim * math.log(2.0))
    return ((bpd - dequantization_offset(data.levels, data.interval)) * math.log(2.0)).to(dtype), bpd.to(dtype)


def _draws(x: Tensor, data: DiscreteData | None, generator) -> Tensor:
    """``n_dequant`` dequantization draws of each point of discrete ``x``, draw-major
    (:func:`~sde_diffusion.likelihood.dequantize`), the generator's first draws; continuous ``x`` as it is."""
    return x if data is None else dequantize(x, data.levels, data.interval, n_dequant=data.n_dequant, generator=generator)


def _from_draws(logp: Tensor, dim: int, data: DiscreteData | None) -> tuple[Tensor, Tensor | None]:
    """``(nll nats/dim, bpd or None)`` ``(B,)`` from the log-densities ``(n_dequant B,)`` in nats of
    :func:`_draws`' draws, averaged over each point's."""
    nll = nats_per_dim(logp, dim).reshape(1 if data is None else data.n_dequant, -1).mean(0)
    return nll, None if data is None else bits_per_dim(logp, dim, data.levels, data.interval, n_dequant=data.n_dequant)


class NLLBound(ABC):
    """One kind of per-point NLL, or upper bound on it (module docstring): its options, what it needs
    and one batch's numbers. :func:`~sde_diffusion.likelihood.evaluate_nll` runs any of them over a
    data set; a new kind subclasses this, sets the needs it has and defines ``name``, ``batch_nll`` and
    ``settings`` (and ``resolve`` where it has "auto" options)."""

    needs_fp32: ClassVar[bool] = False
    """Runs an adaptive ODE solve, whose error control lies far below bf16's rounding: the network must run in fp32."""
    needs_eager: ClassVar[bool] = False
    """Differentiates the network per probe through ``torch.vmap``, which compiled graphs do not support."""
    needs_discrete_chain: ClassVar[bool] = False
    """Needs a discrete-time SDE (``sde.discrete``, a :class:`~sde_diffusion.sdes.DDPMSDE`)."""
    needs_codec: ClassVar[bool] = False
    """Evaluates images through a latent diffusion model's codec; every other kind refuses a latent run."""
    nfe_per: ClassVar[str] = "point"
    """What ``nfe`` counts the network calls of: one ``"solve"`` of a batch, or one ``"point"``."""

    @property
    @abstractmethod
    def name(self) -> str:
        """The kind's name: ``bound`` in :func:`~sde_diffusion.likelihood.evaluate_nll`'s result and ``sde-eval``'s records."""

    @property
    def measures(self) -> str:
        """What the number is an NLL or a bound of (:data:`BOUND_MEANINGS`)."""
        return BOUND_MEANINGS[self.name]

    @property
    def title(self) -> str:
        """The number's name in ``sde-eval``'s line (:data:`TITLES`)."""
        return TITLES[self.name]

    @property
    def dequantizes(self) -> bool:
        """Whether discrete data are dequantized (``n_dequant`` draws per point) or scored as they are."""
        return False

    def resolve(self, sde: SDE, score_fn: ScoreFn, dim: int, data: DiscreteData | None) -> NLLBound:
        """This bound with its ``"auto"`` options made concrete for the model and data of ``dim``
        dimensions, after checking what it needs of them; no ``"auto"`` here: itself."""
        return self

    @abstractmethod
    def batch_nll(self, sde: SDE, score_fn: ScoreFn, x: Tensor, generator: torch.Generator, data: DiscreteData | None) -> BatchNLL:
        """The numbers of the points of ``x`` ``(B, *dims)``, every draw from ``generator``."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The options the number was computed with, as recorded beside it (resolved after :meth:`resolve`)."""

    def with_codec(self, codec) -> NLLBound:
        """The bound for a latent diffusion run under ``codec``; pixel bounds refuse."""
        raise ValueError(f"bound={self.name} is for models on pixels; a latent diffusion run is evaluated by bound=latent (LSGM's bound)")


@dataclass(frozen=True)
class ODELikelihood(NLLBound):
    """The exact NLL of the probability-flow ODE's model at ``t = eps``
    (:func:`~sde_diffusion.likelihood.log_likelihood`, Song et al. 2021, App. D); discrete data are
    dequantized (``n_dequant`` draws per point, then the Hutchinson probes, from one generator).

    Args:
        eps, method, rtol, atol, backend, time_variable, probe: the solve's (``log_likelihood``).
        divergence: ``"exact"``, ``"hutchinson"`` or ``"auto"`` (exact for ``D <= 16``).
        n_probes: Hutchinson probes per point; the exact divergence (also when ``"auto"`` chooses
            it) needs 1.
    """

    eps: float = 1e-5
    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    divergence: str = "auto"
    n_probes: int = 1
    probe: str = "rademacher"
    backend: str = "torchdiffeq"
    time_variable: str = "t"

    needs_fp32: ClassVar[bool] = True
    needs_eager: ClassVar[bool] = True
    nfe_per: ClassVar[str] = "solve"

    def __post_init__(self):
        if self.divergence not in ("auto", *DIVERGENCES):
            raise ValueError(f"divergence must be 'auto' or one of {DIVERGENCES}, got {self.divergence!r}")
        check_exact_probes(self.divergence, self.n_probes)
        check_solve_options(options=None, **{k: v for k, v in self._solve().items() if k != "divergence"})

    @property
    def name(self) -> str:
        return "ode"

    @property
    def dequantizes(self) -> bool:
        return True

    def _solve(self) -> dict[str, Any]:
        """``log_likelihood``'s keyword arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def resolve(self, sde, score_fn, dim, data):
        return dataclasses.replace(self, divergence=resolve_divergence(self.divergence, dim))

    def batch_nll(self, sde, score_fn, x, generator, data):
        y = _draws(x, data, generator)
        out = log_likelihood(sde, score_fn, y, generator=generator, **self._solve())
        return BatchNLL(*_from_draws(out.logp, flat_dim(x), data), out.nfe)

    def settings(self):
        return self._solve()

    def with_codec(self, codec):
        return LatentBound(self, codec)


@dataclass(frozen=True)
class DiscreteVLB(NLLBound):
    """DDPM's variational bound on the NLL of the discrete reverse chain
    (:func:`~sde_diffusion.likelihood.discrete_vlb`, Ho et al. 2020, Eq. 5), of a discrete-time SDE;
    discrete data are scored as they are by the discretized decoder.

    Args:
        variance: the reverse variances, ``"auto"`` (learned when the model learned them, else
            ``"small"``), ``"small"``, ``"large"`` or ``"learned"``.
        n_terms: the network calls per point: None for all ``T`` steps, else the unbiased stratified
            estimate from ``n_terms`` steps (at most ``T``, checked against the SDE).
    """

    variance: str = "auto"
    n_terms: int | None = None

    needs_discrete_chain: ClassVar[bool] = True

    def __post_init__(self):
        if self.variance not in ("auto", *VARIANCES):
            raise ValueError(f"variance must be 'auto' or one of {VARIANCES}, got {self.variance!r}")
        check_range("n_terms", self.n_terms, low=1, integer=True, optional=True, hint="null sums all T steps")

    @property
    def name(self) -> str:
        return "vlb"

    def resolve(self, sde, score_fn, dim, data):
        return dataclasses.replace(self, variance=resolve_variance(self.variance, score_fn))

    def batch_nll(self, sde, score_fn, x, generator, data):
        levels, interval = (None, (-1.0, 1.0)) if data is None else (data.levels, data.interval)
        total = discrete_vlb(
            score_fn, sde, x, variance=self.variance, levels=levels, interval=interval, n_terms=self.n_terms, generator=generator
        )
        nfe = sde.discrete.T if self.n_terms is None else int(self.n_terms)
        return BatchNLL(*_as_scored(total, flat_dim(x), data, x.dtype), nfe)

    def settings(self):
        return {"variance": self.variance, "n_terms": self.n_terms}


DECODERS = ("discretized", "gaussian")


@dataclass(frozen=True)
class ContinuousELBO(NLLBound):
    """The continuous-time ELBO on the NLL of the reverse-SDE model
    (:func:`~sde_diffusion.likelihood.continuous_elbo`, Kingma et al. 2021, Eq. 17; Song, Durkan,
    Murray & Ermon 2021, Thm. 1), of any SDE with a kernel.

    Args:
        n_time_samples: network calls per point, stratified in log-SNR.
        elbo_eps: the decoder's time, or ``"auto"``: with the discretized decoder on data on ``K``
            levels of width ``w`` the time where ``s(t) / m(t) = w / (3 K)``, a third of a bin, where a
            model trained on discrete data has learned to snap ``x_t`` to the levels and the barely
            trained smaller-noise scores do not yet count (measured on the likelihood page of the
            docs); else ``eps``.
        eps: the earliest time: the decoder's where ``"auto"`` has no bins to go by, and the lower
            end of the search for a third of a bin.
        decoder: ``"discretized"``: discrete data scored as they are, the decoder discretized to
            their levels (Kingma et al. 2021, Eq. 12), a bound on ``-log P(x)`` (``bound=elbo``);
            ``"gaussian"``: the Gaussian decoder on dequantized draws, as the ODE sees the data
            (``bound=elbo_dequantized``). Continuous data get the Gaussian decoder with either.
    """

    n_time_samples: int = 32
    elbo_eps: float | str = "auto"
    eps: float = 1e-5
    decoder: str = "discretized"

    def __post_init__(self):
        check_range("n_time_samples", self.n_time_samples, low=0, low_open=True, integer=True)
        if self.elbo_eps != "auto":
            check_range("elbo_eps", self.elbo_eps, low=0, low_open=True, hint="a time in (0, T), or 'auto'")
        check_range("eps", self.eps, low=0, hint="the reference value is 1e-5")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")

    @property
    def name(self) -> str:
        return "elbo" if self.decoder == "discretized" else "elbo_dequantized"

    @property
    def dequantizes(self) -> bool:
        return self.decoder == "gaussian"

    def resolve(self, sde, score_fn, dim, data):
        if self.elbo_eps != "auto":
            return dataclasses.replace(self, elbo_eps=float(self.elbo_eps))
        if self.dequantizes or data is None or not sde.has_kernel:
            return dataclasses.replace(self, elbo_eps=self.eps)
        third_of_a_bin = data.width / (3 * data.levels)  # s / m there: log-SNR = -2 log(third)
        log_snr = torch.tensor(-2.0 * math.log(third_of_a_bin), dtype=torch.float64)
        return dataclasses.replace(self, elbo_eps=float(sde.time_from_log_snr(log_snr, self.eps)))

    def batch_nll(self, sde, score_fn, x, generator, data):
        options = {"eps": self.elbo_eps, "n_time_samples": self.n_time_samples, "generator": generator}
        if data is not None and not self.dequantizes:
            total = continuous_elbo(score_fn, sde, x, levels=data.levels, interval=data.interval, **options)
            return BatchNLL(*_as_scored(total, flat_dim(x), data, x.dtype), int(self.n_time_samples))
        logp = -continuous_elbo(score_fn, sde, _draws(x, data, generator), **options)
        return BatchNLL(*_from_draws(logp, flat_dim(x), data), self.n_time_samples)

    def settings(self):
        return {"n_time_samples": self.n_time_samples, "elbo_eps": self.elbo_eps}


@dataclass(frozen=True)
class LatentBound(NLLBound):
    """LSGM's upper bound on the images' NLL of a latent diffusion model
    (:func:`~sde_diffusion.likelihood.latent.latent_bound`, Vahdat et al. 2021, Eq. 2): the codec's
    decoder over the probability-flow ODE's density of the latents, one latent draw per point; the
    images are scored as they are (the decoder is discretized to their levels).

    Args:
        ode: the latents' likelihood (its divergence ``"auto"`` resolved for the latents' dimension).
        codec: the model's :class:`~sde_diffusion.latents.LatentCodec`; None until a latent run
            supplies it (:meth:`with_codec`), which ``evaluate_nll`` requires.
    """

    ode: ODELikelihood = ODELikelihood()
    codec: Any = None

    needs_fp32: ClassVar[bool] = True
    needs_eager: ClassVar[bool] = True
    needs_codec: ClassVar[bool] = True
    nfe_per: ClassVar[str] = "solve"

    @property
    def name(self) -> str:
        return "latent"

    def resolve(self, sde, score_fn, dim, data):
        if self.codec is None:
            raise ValueError("bound='latent' (LSGM's bound of a latent diffusion model) and codec go together: give both or neither")
        return dataclasses.replace(self, ode=self.ode.resolve(sde, score_fn, self.codec.dims, None))

    def batch_nll(self, sde, score_fn, x, generator, data):
        terms, nfe = latent_bound(self.codec, sde, score_fn, x, generator=generator, **self.ode._solve())
        dim = flat_dim(x)
        parts = {k: (terms[k] / dim).cpu() for k in ("reconstruction", "log_q", "prior_nll")}
        return BatchNLL(*_as_scored(terms["nll"], dim, data, x.dtype), nfe, parts)

    def settings(self):
        return self.ode.settings()

    def with_codec(self, codec):
        return dataclasses.replace(self, codec=codec)


BOUND_MEANINGS = {
    "ode": "the exact NLL of the probability-flow ODE's model, which is not the reverse-SDE model that bound=elbo/vlb bound",
    "vlb": "an upper bound on the NLL of DDPM's discrete reverse chain (the ancestral sampler), not a bound on the ODE's NLL",
    "elbo": "an upper bound on the NLL of the reverse-SDE (diffusion) model, not a bound on the ODE's NLL",
    "elbo_dequantized": "an upper bound on the NLL of the reverse-SDE (diffusion) model of dequantized data, not a bound on the ODE's NLL",
    "latent": "an upper bound on the NLL of the latent diffusion model (the decoder over the probability-flow ODE's prior on latents)",
}
"""What each bound's number is of (``measures`` in :func:`~sde_diffusion.likelihood.evaluate_nll`'s
result, printed by ``sde-eval``): ``-log p^ODE`` exactly (Song et al. 2021, App. D) or a bound on
``-log p^SDE`` (Song, Durkan, Murray & Ermon 2021, Thm. 1; Ho et al. 2020, Eq. 5), two models
from one network (module docstring)."""

TITLES = {"ode": "NLL", "vlb": "VLB", "elbo": "ELBO", "elbo_dequantized": "ELBO (dequantized)", "latent": "LSGM bound"}
"""Each bound's number as ``sde-eval``'s line names it."""
