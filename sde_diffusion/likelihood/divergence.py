"""Divergence of a velocity field, batched: exact Jacobian trace or Hutchinson-Skilling estimate.

Both are quadratic forms ``v^T (d f/dx) v`` over a stack of probes ``v``: the ``D`` coordinate basis
vectors give the exact trace ``sum_d e_d^T J e_d`` (Chen et al. 2018); random probes with
``E[v v^T] = I`` (Rademacher or Gaussian) give the unbiased Hutchinson-Skilling estimate
``E_v[v^T J v] = tr J`` (Hutchinson 1990, Skilling 1989; Grathwohl et al. 2019). One forward evaluation of the field and
vectorised backward passes (``is_grads_batched``) over blocks of probes serve all probes of a batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._shapes import flat_dim

PROBES = ("rademacher", "gaussian")

PROBE_BLOCK_ROWS = 8192
"""A vectorised backward pass over ``P`` probes of a batch of ``B`` holds ``P B`` rows of every
intermediate of the field; blocks of probes keep ``P B <= 8192``. One pass over all probes ran up
to 2x slower on a CPU once ``P B`` reached ~10^4 (exact divergence at ``D = 16``, ``B >= 1000``;
benchmarks/likelihood.md), and its memory grows with ``P B``; below the cap nothing changes."""


def basis_probes(x: Tensor) -> Tensor:
    """The ``D`` coordinate basis vectors, one per probe, shape ``(D, B, *dims)`` (a stride-0 view)."""
    d = flat_dim(x)
    eye = torch.eye(d, dtype=x.dtype, device=x.device).reshape(d, 1, *x.shape[1:])
    return eye.expand(d, *x.shape)


def random_probes(x: Tensor, kind: str, n_probes: int, generator: torch.Generator | None) -> Tensor:
    """``n_probes`` independent probes per sample with ``E[v v^T] = I``, shape ``(n_probes, B, *dims)``.

    ``kind="rademacher"``: entries +-1 with probability 1/2 (the lower-variance choice, Hutchinson
    1990); ``kind="gaussian"``: entries ``N(0, 1)`` (Skilling 1989).
    """
    shape = (n_probes, *x.shape)
    if kind == "rademacher":
        bits = torch.randint(0, 2, shape, generator=generator, device=x.device)
        return (2 * bits - 1).to(x.dtype)
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
    raise ValueError(f"probe must be one of {PROBES}, got {kind!r}")


def jacobian_quadratic_forms(field: Callable[[Tensor], Tensor], x: Tensor, probes: Tensor) -> tuple[Tensor, Tensor]:
    """Evaluate ``f(x)`` and ``v_p^T (d f / d x) v_p`` for every probe ``v_p`` and sample.

    Args:
        field: a batched map ``(B, *dims) -> (B, *dims)`` whose samples do not interact.
        x: ``(B, *dims)``.
        probes: ``(P, B, *dims)``.
    Returns: ``f(x)`` of shape ``(B, *dims)`` and the forms ``(P, B)``, both detached.
    """
    blocks = probes.split(max(1, PROBE_BLOCK_ROWS // x.shape[0]))
    forms = []
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        f = field(x)
        for i, v in enumerate(blocks):
            last = i == len(blocks) - 1
            (vjp,) = torch.autograd.grad(f, x, grad_outputs=v, is_grads_batched=True, retain_graph=not last)
            forms.append((vjp * v).flatten(2).sum(-1))
    return f.detach(), torch.cat(forms)
