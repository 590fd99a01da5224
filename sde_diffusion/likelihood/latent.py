"""An upper bound on the pixel NLL of a latent diffusion model (Vahdat et al. 2021, "Score-based
Generative Modeling in Latent Space" (LSGM), Eq. 2 with the score prior's likelihood by the ODE):

    -log p(x) <= E_{q(z|x)} [ -log p(x | z) + log q(z | x) - log p_theta(z) ],

one draw ``z ~ q(z | x)`` per point (an unbiased estimate of the right side), ``log p_theta(z)`` the
probability-flow ODE's log-density of the diffusion model on the latents
(:func:`~sde_diffusion.likelihood.log_likelihood`), and ``p(x | z)`` the decoder discretized to the
data's levels, so that on discrete data the bound is on ``-log P(x)``, in the units of the pixel
models' bits/dim. ``q`` and ``p_theta`` are densities of the same scaled latent (the codec's), so
the scale factor cancels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..sdes.base import SDE
from ..types import ScoreFn
from .ode import log_likelihood


def latent_bound(codec, sde: SDE, score_fn: ScoreFn, x: Tensor, *, generator: torch.Generator | None = None, **ode) -> tuple[dict, int]:
    """The LSGM bound's terms per point ``(B,)`` in nats for images ``x`` ``(B, C, H, W)``:
    ``reconstruction = -log p(x | z)``, ``log_q = log q(z | x)``, ``prior_nll = -log p_theta(z)`` and
    their sum ``nll`` (the bound), with one draw ``z ~ q(z | x)`` from ``generator``; and the ODE's NFE.

    ``codec``: a :class:`~sde_diffusion.latents.LatentCodec` (``encode(x, generator) -> (z, log_q)``,
    ``log_p_x(x, z)``); ``ode``: keyword arguments of ``log_likelihood`` (``eps``, ``rtol``,
    ``divergence``, ...; its Hutchinson probes also come from ``generator``)."""
    with torch.no_grad():
        z, log_q = codec.encode(x, generator)
        log_px = codec.log_p_x(x, z)
    out = log_likelihood(sde, score_fn, z, generator=generator, **ode)
    terms = {"reconstruction": -log_px, "log_q": log_q, "prior_nll": -out.logp.detach()}
    terms["nll"] = terms["reconstruction"] + terms["log_q"] + terms["prior_nll"]
    return terms, out.nfe
