"""The reverse-time SDE solved by torchsde (Li et al. 2020; Kidger et al. 2021).

torchsde integrates forward in an increasing time with states of shape ``(B, D)``; the adapter
below flattens ``(B, *dims)`` to ``(B, D)`` and runs the reverse SDE in the grid-index time
``tau in [0, N]``, where ``t(tau)`` interpolates the grid linearly: ``t(tau) = ts[i] - (tau - i) h_i``
on ``[i, i + 1]`` with ``h_i = ts[i] - ts[i + 1] > 0``. For the uniform grid this is
``tau = (T - t) / h``. Since ``dt / dtau = -h_i``, the reverse SDE ``dx = [f - g^2 s] dt + g dw_bar``
(Song et al. 2021, Eq. 6) becomes

    dx = h_i [g(t)^2 s(x, t) - f(x, t)] dtau + g(t) sqrt(h_i) dW_tau,

and torchsde's steps of size 1 land exactly on the grid times. On a non-uniform grid the speed
``h_i`` jumps at the grid times, which multi-stage methods (srk, reversible_heun) see as a kink.
"""

from __future__ import annotations

from collections import deque

import torch
import torchsde
from torch import Tensor
from tqdm.auto import tqdm

from .._noise import NoiseSource, PerSampleNoise
from .._seeding import derive_seed
from .._shapes import batch_time
from .._solvers import SDE_STRONG_ORDERS as METHOD_ORDERS  # the reverse SDE's noise g(t) is additive
from ..scores import CountingScore
from ..sdes.base import SDE
from ..timesteps import check_grid
from ..types import ScoreFn
from .base import SamplerOutput, with_order

_SDE_TYPES = {"euler": "ito", "milstein": "ito", "srk": "ito", "reversible_heun": "stratonovich"}
"""Itô and Stratonovich forms coincide for state-independent noise, so each method gets its own."""


class _GridIndexReverseSDE:
    """torchsde's ``f(tau, y)`` and ``g(tau, y)`` for the reverse SDE in grid-index time.

    ``f`` memoises its last few evaluations by the identity of ``y``: torchsde's contract check and
    its SRK stages re-evaluate the drift at states it has already seen, and the memo keeps the NFE
    at the number of distinct score evaluations.
    """

    noise_type = "diagonal"

    def __init__(self, sde: SDE, score_fn: ScoreFn, ts: Tensor, shape: torch.Size, sde_type: str, bar):
        self.sde = sde
        self.reverse = sde.reverse(score_fn)
        self.sde_type = sde_type
        self.ts = ts
        self.h = ts[:-1] - ts[1:]
        self.shape = shape
        self.bar = bar
        self._memo: deque = deque(maxlen=4)

    def _time(self, tau: Tensor) -> tuple[Tensor, Tensor]:
        i = min(int(tau), len(self.h) - 1)
        self.bar.update(max(0, i - self.bar.n))
        return self.ts[i] - (tau - i) * self.h[i], self.h[i]

    def f(self, tau: Tensor, y: Tensor) -> Tensor:
        key = float(tau)
        for y_seen, tau_seen, drift in self._memo:
            if y_seen is y and tau_seen == key:
                return drift
        t, h = self._time(tau)
        x = y.reshape(self.shape)
        drift = (-h * self.reverse.drift(x, batch_time(t, x))).reshape(y.shape)
        self._memo.append((y, key, drift))
        return drift

    def g(self, tau: Tensor, y: Tensor) -> Tensor:
        t, h = self._time(tau)
        g = self.sde.diffusion(batch_time(t, y)) * h.sqrt()
        return g[:, None].expand_as(y)


@with_order(METHOD_ORDERS["euler"], dict(METHOD_ORDERS))
@torch.no_grad()
def torchsde_sampler(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: NoiseSource = None,
    progress: bool = False,
    method: str = "euler",
) -> SamplerOutput:
    """Solve the reverse SDE with ``torchsde.sdeint`` on the grid ``ts`` (one solver step per interval).

    Noise comes from a ``torchsde.BrownianInterval`` whose seed is drawn from ``generator``, so the
    same generator state, grid and method give the same samples (the interval's path also depends on
    where it is queried, so another grid or method sees another path). The Brownian motion is one for
    the whole batch: with :class:`~sde_diffusion._noise.PerSampleNoise` its seed comes from the
    batch's first sample number, so samples depend on the batch split. The output is the SDE's state
    at ``ts[-1]`` (the last step adds its noise, unlike :func:`euler_maruyama`).

    Args:
        x: prior samples ``(B, *dims)`` at ``ts[0]``.
        ts: decreasing times ``(N + 1,)``.
        method: ``"euler"`` (Euler-Maruyama), ``"milstein"`` (derivative-free; its correction vanishes
            for state-independent noise, so it equals Euler), ``"srk"`` (Rößler's stochastic
            Runge-Kutta, strong order 1.5) or ``"reversible_heun"`` (Kidger et al. 2021).
            Strong orders: ``torchsde_sampler.method_orders``.
    Returns: samples ``(B, *dims)`` at ``ts[-1]``; NFE = N for euler and milstein, 4N for srk,
    N + 1 for reversible_heun.
    """
    check_grid(ts)
    if method not in METHOD_ORDERS:
        raise ValueError(f"unknown torchsde method {method!r}; choose one of {sorted(METHOD_ORDERS)}")
    n = len(ts) - 1
    ts = ts.to(dtype=x.dtype, device=x.device)
    y0 = x.reshape(x.shape[0], -1)
    if isinstance(generator, PerSampleNoise):
        seed = derive_seed(generator.seed, int(generator.indices[0])) >> 2
    else:
        seed = int(torch.randint(2**62, (), generator=generator))
    bm = torchsde.BrownianInterval(
        t0=0.0,
        t1=float(n),
        size=y0.shape,
        dtype=x.dtype,
        device=x.device,
        entropy=seed,
        dt=1.0,
        levy_area_approximation="space-time" if method == "srk" else "none",
    )
    score = CountingScore(score_fn)
    with tqdm(total=n, disable=not progress, desc=f"torchsde ({method})", leave=False) as bar:
        adapter = _GridIndexReverseSDE(sde, score, ts, x.shape, _SDE_TYPES[method], bar)
        taus = torch.tensor([0.0, float(n)], dtype=x.dtype, device=x.device)
        options = {"grad_free": True} if method == "milstein" else None
        y = torchsde.sdeint(adapter, y0, taus, bm=bm, method=method, dt=1.0, adaptive=False, options=options)[-1]
        bar.update(n - bar.n)
    return SamplerOutput(y.reshape(x.shape), score.nfe)
