"""Controllable generation with an unconditional score: inpainting and SDEdit.

Both reuse the plain ``score(x, t)`` of any model: inpainting runs the predictor-corrector chain
with the known coordinates replaced by their noised values (Song et al. 2021, App. I.2), SDEdit
noises a given input to an intermediate time and runs any sampler from there (Meng et al. 2022).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..scores import CountingScore, ScoreFn
from ..sdes.base import SDE
from ..sdes.simulate import sample_marginal
from ..timesteps import check_grid
from .base import SamplerOutput
from .correctors import Corrector, NoCorrector
from .predictor_corrector import _check_policies, tweedie_denoise
from .predictors import NoPredictor, Predictor

MASK_REGIONS = ("left", "right", "top", "bottom", "center", "random")
"""Regions :func:`inpainting_mask` can leave unknown."""


def inpainting_mask(region: str, data_shape: tuple[int, ...], *, generator: torch.Generator | None = None) -> Tensor:
    """A boolean mask of shape ``data_shape`` that is True where pixels are KNOWN (kept) and False
    on ``region``, the part to inpaint.

    ``region``: ``left``/``right`` (half of the columns, the larger half for odd widths), ``top``/
    ``bottom`` (half of the rows), ``center`` (the middle half of the rows and of the columns), or
    ``random`` (each pixel unknown with probability 1/2, drawn from ``generator``). The last two axes
    are the image's ``(H, W)`` and the mask is shared by the channels; vector data ``(D,)`` are one
    row of ``D`` columns, so only ``left``, ``right``, ``center`` and ``random`` apply to them.
    """
    if region not in MASK_REGIONS:
        raise ValueError(f"mask region must be one of {', '.join(MASK_REGIONS)}, got {region!r}")
    data_shape = tuple(int(d) for d in data_shape)
    if not data_shape:
        raise ValueError("data_shape must have at least one axis, e.g. (2,) or (1, 8, 8)")
    h, w = (data_shape[-2], data_shape[-1]) if len(data_shape) >= 2 else (1, data_shape[-1])
    if region in ("top", "bottom") and len(data_shape) < 2:
        raise ValueError(
            f"mask={region} needs images (C, H, W); data of shape {data_shape} have no rows, use left, right, center or random"
        )
    rows, cols = torch.arange(h)[:, None], torch.arange(w)[None, :]
    unknown = {
        "left": cols < (w + 1) // 2,
        "right": cols >= w // 2,
        "top": rows < (h + 1) // 2,
        "bottom": rows >= h // 2,
        "center": (rows >= h // 4) & (rows < h - h // 4) & (cols >= w // 4) & (cols < w - w // 4),
        "random": None,
    }[region]
    if unknown is None:
        unknown = torch.rand(h, w, generator=generator) < 0.5
    unknown = unknown.expand(h, w) if len(data_shape) >= 2 else unknown[0]
    return (~unknown).expand(data_shape).clone()


def _check_mask(mask: Tensor, x_known: Tensor) -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a tensor (True or 1 where x_known is known), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must be boolean or hold only 0 and 1 (1 where x_known is known, 0 where to inpaint)")
        mask = mask == 1
    try:
        shape = torch.broadcast_shapes(mask.shape, x_known.shape)
    except RuntimeError:
        shape = None
    if shape != x_known.shape:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to x_known's shape {tuple(x_known.shape)}; "
            f"give it the shape (*dims) or (B, *dims)"
        )
    return mask.to(x_known.device)


@torch.no_grad()
def inpaint(
    sde: SDE,
    score_fn: ScoreFn,
    x_known: Tensor,
    mask: Tensor,
    ts: Tensor,
    *,
    predictor: Predictor,
    corrector: Corrector,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> SamplerOutput:
    """Inpainting by predictor-corrector sampling with replacement (Song et al. 2021, App. I.2).

    At every grid time ``t_i`` the known coordinates are a fresh draw of their noised values
    ``k_i = m(t_i) x_known + s(t_i) z`` (``sde``'s kernel; simulated for an SDE without one). Starting
    from ``x = [k_0 on the mask, prior elsewhere]``, step ``i`` moves ``x`` from ``t_i`` to
    ``t_{i+1}`` with the predictor, sets the known coordinates to ``k_{i+1}``, runs the corrector at
    ``t_{i+1}`` and sets them to ``k_{i+1}`` again. Every score evaluation sees the known coordinates
    at ``k_i`` (also inside a corrector's several Langevin steps), so the unknown ones follow the
    model's ``p_t(x_unknown | x_known(t) = k_i)``, which tends to ``p_0(x_unknown | x_known)`` as
    ``t -> 0``; the corrector's Langevin steps pull the chain onto it at each time. With
    ``denoise``, Tweedie's step at ``ts[-1]`` follows (:func:`tweedie_denoise`). The output holds
    ``x_known`` exactly on the mask.

    Args:
        x_known: ``(B, *dims)``; only its values on the mask are read.
        mask: boolean (or 0/1) tensor broadcasting to ``(B, *dims)``, True where ``x_known`` is
            known, e.g. :func:`inpainting_mask`.
        ts: decreasing times ``(N + 1,)`` from ``T`` to ``eps``.
        predictor, corrector: as for :func:`predictor_corrector`, e.g. ``ReverseDiffusionPredictor()``
            and ``LangevinCorrector(snr=0.16)``.
        generator: draws the prior, the noised known values and the steps' noise.
    Returns: samples ``(B, *dims)`` and NFE ``= N (1 + M) (+ 1 with denoise)``, as the
    predictor-corrector sampler.
    """
    check_grid(ts)
    _check_policies(sde, "inpaint", predictor, corrector, needs_kernel=denoise)
    if isinstance(predictor, NoPredictor) and isinstance(corrector, NoCorrector):
        raise ValueError("inpaint with NoPredictor and NoCorrector does nothing; choose one of them")
    mask = _check_mask(mask, x_known)
    score = CountingScore(score_fn)

    def noised_known(t: Tensor) -> Tensor:
        return sample_marginal(sde, x_known, t, generator=generator)

    def holding(known: Tensor) -> ScoreFn:
        return lambda x, t: score(torch.where(mask, known, x), t)

    known = noised_known(ts[0])
    prior = sde.prior_sample(x_known.shape, generator=generator, device=x_known.device, dtype=x_known.dtype)
    x = torch.where(mask, known, prior)
    for i in tqdm(range(len(ts) - 1), disable=not progress, desc="inpaint", leave=False):
        x, _ = predictor.step(sde, holding(known), x, ts[i], ts[i + 1], generator)
        known = noised_known(ts[i + 1])
        x = torch.where(mask, known, x)
        x, _ = corrector.step(sde, holding(known), x, ts[i + 1], ts[i], generator)
        x = torch.where(mask, known, x)
    if denoise:
        x = tweedie_denoise(sde, score, x, ts[-1])
    return SamplerOutput(torch.where(mask, x_known, x), score.nfe)


def _grid_from(ts: Tensor, t0: float) -> Tensor:
    """``[t0, the times of ts below t0]``: the grid's own spacing, started at ``t0``."""
    return torch.cat([ts.new_tensor([t0]), ts[ts < t0]])


def sdedit(
    sde: SDE,
    score_fn: ScoreFn,
    x_input: Tensor,
    t0: float,
    ts: Tensor,
    *,
    sampler: Callable[..., SamplerOutput],
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> SamplerOutput:
    """SDEdit (Meng et al. 2022, Alg. 1): noise ``x_input`` to time ``t0`` and denoise it with ``sampler``.

    ``x(t0) = m(t0) x_input + s(t0) z`` is drawn from the perturbation kernel (simulated for an SDE
    without one), then ``sampler(sde, score_fn, x(t0), ts', generator=..., progress=...)`` runs on
    ``ts' = [t0, every time of ts below t0]``, so the steps keep the grid's spacing and their number
    shrinks with ``t0``. Small ``t0`` stays faithful to the input; ``t0 = T`` ignores it (up to
    ``m(T)``) and samples the model. For ``t0`` at or below ``ts[-1]`` nothing is left to sample and
    ``x_input`` is returned unchanged (NFE 0), the limit ``t0 -> 0``.

    Args:
        x_input: ``(B, *dims)`` guides (e.g. strokes or a corrupted image) in data units.
        t0: start time in ``[0, ts[0]]``; Meng et al. use ``t0`` around 0.3-0.6 for VE and VP SDEs.
        ts: a full decreasing grid ``(N + 1,)`` from ``T`` to ``eps``.
        sampler: any sampler, e.g. ``functools.partial(predictor_corrector, predictor=..., corrector=...)``.
    Returns: the sampler's output (samples ``(B, *dims)`` and its NFE).
    """
    check_grid(ts)
    t0 = float(t0)
    if not 0.0 <= t0 <= float(ts[0]):
        raise ValueError(f"t0 must lie in [0, ts[0]] = [0, {float(ts[0]):g}], got {t0} (0.5 is a usual start)")
    if t0 <= float(ts[-1]):
        return SamplerOutput(x_input.clone(), 0)
    x_t0 = sample_marginal(sde, x_input, t0, generator=generator)
    return sampler(sde, score_fn, x_t0, _grid_from(ts, t0), generator=generator, progress=progress)
