"""Do the samples stay where the data live? A check that catches diverged samplers and undertrained
scores, which a distance such as sliced W2 reports only as "large".

A sampler driven by a poor score does not fail: it returns finite numbers far outside the data
(a probability-flow solve integrates the score's error over the whole noise range, so at
``sigma_max = 80`` an error of 1 in the predicted noise moves a sample by about 80). The apps
report, beside every sample-quality number, the fraction of sample values outside the held-out
data's range widened by a margin and the largest ``|x|`` relative to the data's, and warn when
either is material (:attr:`SampleRange.material`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ._checks import check_range

MARGIN = 0.1
"""Default margin: the data's range ``[lo, hi]`` is widened by this fraction of ``hi - lo`` on each side."""

MATERIAL_FRACTION = 0.01
"""A sample set with more than this fraction of its values outside the widened range is flagged."""

MATERIAL_RATIO = 3.0
"""A sample set whose largest ``|x|`` exceeds this multiple of the data's largest ``|x|`` is flagged."""


@dataclass(frozen=True)
class SampleRange:
    """How far a sample set strays from the data's range (all values in the data's units).

    ``low``, ``high``: the held-out data's smallest and largest value (over every coordinate or pixel);
    ``margin``: the widening, a fraction of ``high - low`` on each side; ``fraction_outside``: the
    fraction of the samples' finite values outside ``[low - margin (high - low), high + margin (high - low)]``;
    ``max_abs`` and ``data_max_abs``: the largest finite ``|x|`` of the samples and of the data;
    ``n_nonfinite``: the number of NaN or infinite values.
    """

    fraction_outside: float
    max_abs: float
    data_max_abs: float
    low: float
    high: float
    margin: float
    n_nonfinite: int

    @property
    def max_abs_ratio(self) -> float:
        """The samples' largest ``|x|`` over the data's (1 or less: no sample beyond the data)."""
        return self.max_abs / self.data_max_abs if self.data_max_abs > 0 else float("inf") if self.max_abs > 0 else 1.0

    @property
    def material(self) -> bool:
        """True when the samples leave the data's range enough to matter: more than
        :data:`MATERIAL_FRACTION` of the values outside the widened range, a largest ``|x|`` over
        :data:`MATERIAL_RATIO` times the data's, or any value not finite."""
        return self.fraction_outside > MATERIAL_FRACTION or self.max_abs_ratio > MATERIAL_RATIO or self.n_nonfinite > 0

    def as_dict(self) -> dict:
        """The fields and the ratio, for a summary file."""
        return {**asdict(self), "max_abs_ratio": self.max_abs_ratio, "material": self.material}

    def summary_entries(self, of: str) -> dict:
        """The entries of an app's summary file: the fraction and the ratio at the top (the columns of
        ``sde-summarize``'s table) and every field under ``sample_range``, with what was checked (``of``:
        samples, latents, base samples)."""
        return {
            "samples_outside_range": self.fraction_outside,
            "samples_max_abs_ratio": self.max_abs_ratio,
            "sample_range": {**self.as_dict(), "of": of},
        }

    def brief(self, what: str = "values") -> str:
        """The summary line's statement: ``"0.1% of values outside the data's range (largest |x| 1.1x the data's)"``."""
        return f"{100 * self.fraction_outside:.1f}% of {what} outside the data's range (largest |x| {self.max_abs_ratio:.1f}x the data's)"

    def text(self) -> str:
        """``"2.1% of values outside the data's range [-4, 4] (+10%), largest |x| 1.3x the data's"``."""
        nonfinite = f", {self.n_nonfinite} not finite" if self.n_nonfinite else ""
        return (
            f"{100 * self.fraction_outside:.1f}% of values outside the data's range [{self.low:.3g}, {self.high:.3g}] "
            f"(+{100 * self.margin:g}%), largest |x| {self.max_abs_ratio:.1f}x the data's{nonfinite}"
        )


def sample_range(samples: Tensor, data: Tensor, *, margin: float = MARGIN) -> SampleRange:
    """Compare ``samples`` ``(N, *dims)`` with the value range of ``data`` ``(M, *dims)`` (held-out
    data in the units the model was trained in), over all values of all coordinates or pixels.

    Computed on the CPU in float64 in one pass; ``margin >= 0`` widens the range by that fraction of
    its width on each side, so that a good model's tails (a Gaussian cluster's outermost samples, a
    pixel slightly past the clipping range) are not counted."""
    margin = check_range("margin", margin, low=0.0, hint="a fraction of the data's range")
    if samples.shape[1:] != data.shape[1:]:
        raise ValueError(f"samples {tuple(samples.shape)} and data {tuple(data.shape)} differ in their per-sample shape")
    x = samples.detach().reshape(-1).double().cpu()
    d = data.detach().reshape(-1).double().cpu()
    finite = torch.isfinite(x)
    low, high = float(d.min()), float(d.max())
    pad = margin * (high - low)
    xf = x[finite]
    outside = ((xf < low - pad) | (xf > high + pad)).sum().item()
    return SampleRange(
        fraction_outside=outside / max(xf.numel(), 1),
        max_abs=float(xf.abs().max()) if xf.numel() else 0.0,
        data_max_abs=float(d.abs().max()),
        low=low,
        high=high,
        margin=margin,
        n_nonfinite=int((~finite).sum()),
    )


def range_advice(ema: SampleRange, raw: SampleRange | None = None, *, hint: str = "", ema_fix: str = "lower train.ema_decay") -> str:
    """The likely cause and the fix of samples that leave the data's range, in one sentence for a
    warning line. ``ema``: the range of the (EMA) model's samples; ``raw``: that of the raw weights'
    samples drawn the same way, when they were checked; ``hint``: a fix specific to the run (its
    path or network), appended as it is; ``ema_fix``: how this run's average is made shorter."""
    if raw is not None and not raw.material:
        cause = (
            f"the raw weights' samples stay in range ({raw.text()}), so the EMA still averages early, poorer weights: "
            f"train longer (train.steps), {ema_fix}, or sample the raw weights (weights=raw in sde-sample and sde-eval)"
        )
    else:
        also = ""
        if raw is not None:
            fewer = raw.fraction_outside < 0.5 * ema.fraction_outside
            also = f" (the raw weights' samples too: {raw.text()}{'; the EMA lags as well' if fewer else ''})"
        cause = (
            f"the learned score is not yet good enough for this sampler{also}: train longer (train.steps), or try another sampler "
            "(the reverse SDE, sampler=euler_maruyama, often forgives score errors that the ODE solvers integrate)"
        )
    return cause + (f"; {hint}" if hint else "")
