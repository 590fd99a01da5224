"""Cold diffusion sampling (Bansal et al. 2022): undo a deterministic degradation ``D(x_0, t)`` with a
restoration network ``R(x_t, t) ~ x_0``, from the most degraded image down to ``t = 0``.

On the grid ``1 = t_0 > t_1 > ... > t_N = 0``, with ``x0_hat = R(x, t_i)``:

- ``"naive"`` (Alg. 1): ``x <- D(x0_hat, t_{i+1})``;
- ``"improved"`` (Alg. 2): ``x <- x - D(x0_hat, t_i) + D(x0_hat, t_{i+1})``.

For a linear ``D`` and a restorer with a fixed error ``e`` (``R = x_0 + e``), Alg. 1 ends at
``x_0 + e`` while Alg. 2 telescopes to ``x_0 + e - D(e, t_0) + ...``: exactly ``x_T - D(x_0 + e, 1) +
x_0 + e``, i.e. ``x_0 + (e - D(e, 1))`` from ``x_T = D(x_0, 1)``, whose error vanishes for every ``e``
the full degradation leaves unchanged (smooth errors under blur, constant ones under pixelation):
the first-order cancellation of Bansal et al., Sec. 3.3. A perfect restorer returns ``x_0`` under both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._checks import check_range
from .base import SamplerOutput

ALGORITHMS = ("naive", "improved")


@torch.no_grad()
def cold_sample(
    restore: Callable[[Tensor, Tensor], Tensor],
    degradation: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    n_steps: int = 20,
    *,
    algorithm: str = "improved",
    t_start: float = 1.0,
    progress: bool = False,
) -> SamplerOutput:
    """Restore ``x`` ``(B, *dims)``, degraded to level ``t_start``, over ``n_steps`` equal steps to ``t = 0``.

    ``restore(x, t) -> x0_hat`` with ``t`` ``(B,)``; ``degradation(x, t)`` as in
    :mod:`sde_diffusion.degradations`. Returns the result and the number of restorer calls (``n_steps``).
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be 'naive' (Bansal et al. Alg. 1) or 'improved' (Alg. 2), got {algorithm!r}")
    n_steps = check_range("n_steps", n_steps, low=1, integer=True, hint="the restorer's calls; 20 is usual")
    t_start = check_range("t_start", t_start, low=0.0, high=1.0, low_open=True, hint="1: from the fully degraded image")
    ts = torch.linspace(t_start, 0.0, n_steps + 1, dtype=torch.float64).tolist()
    batch = x.shape[0]
    for i in tqdm(range(n_steps), disable=not progress, desc=f"cold ({algorithm})", leave=False):
        t, t_next = (torch.full((batch,), v, device=x.device, dtype=x.dtype) for v in (ts[i], ts[i + 1]))
        x0_hat = restore(x, t)
        x = degradation(x0_hat, t_next) if algorithm == "naive" else x - degradation(x0_hat, t) + degradation(x0_hat, t_next)
    return SamplerOutput(x, n_steps)
