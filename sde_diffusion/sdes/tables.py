"""The kernel of an SDE tabulated on a sampler's time grid, for the samplers that step with it."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import SDE


def kernel_table(sde: SDE, ts: Tensor, like: Tensor, caller: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(m, s, logSNR)`` of ``sde`` at every time of the grid ``ts`` ``(N + 1,)``, each ``(N + 1,)``.

    Evaluated in float64 and cast to the dtype and device of ``like`` (the sampler's state). Rejects
    SDEs without a kernel and grids that reach ``t = 0``, where ``s = 0`` (``caller`` names the
    sampler in the errors). The grid's own shape and order are the caller's to check.
    """
    if not sde.has_kernel:
        raise ValueError(
            f"{caller} needs the perturbation kernel m(t), s(t), which {type(sde).__name__} does not "
            f"define; implement kernel(t) or use probability_flow_sampler or euler_maruyama"
        )
    if not ts[-1] > 0:
        raise ValueError(
            f"{caller} needs a grid ending at eps > 0 (the kernel std s(0) = 0), got ts[-1] = {float(ts[-1])}; build the grid with eps=1e-3"
        )
    t64 = ts.to(torch.float64)
    m, s = sde.kernel(t64)
    log_snr = sde.log_snr(t64)
    return (
        m.to(dtype=like.dtype, device=like.device),
        s.to(dtype=like.dtype, device=like.device),
        log_snr.to(dtype=like.dtype, device=like.device),
    )
