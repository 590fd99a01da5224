"""One range check for every option the library and the apps validate: a number of the right kind
inside its bounds, or a ``ValueError`` whose message names the option, what it must be, the value
given and, where useful, a hint."""

from __future__ import annotations

import math


def _bounds_text(low, high, low_open: bool, high_open: bool, integer: bool) -> str:
    kind = "an integer" if integer else "a number"
    if low is not None and high is not None:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        return f"be an integer in {interval}" if integer else f"lie in {interval}"
    if low is not None:
        if low == 0 and low_open:
            return "be a positive " + ("integer" if integer else "number")
        return f"be {kind} {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"be {kind} {'<' if high_open else '<='} {high:g}"
    return f"be {'an integer' if integer else 'a finite number'}"


def check_range(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    optional: bool = False,
    hint: str = "",
):
    """Return ``value`` as an ``int`` (``integer=True``) or a ``float`` when it is a number (not a
    bool), finite, whole if ``integer``, and within ``[low, high]`` (an end is excluded with
    ``low_open``/``high_open``; None means unbounded); ``None`` passes when ``optional``.

    Otherwise raise ``ValueError("<name> must <bounds>, got <value>[ (<hint>)]")``, e.g.
    ``train.lr must be a positive number, got -1 (try 1e-3)``."""
    if value is None and optional:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (not integer or int(value) == value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        what = _bounds_text(low, high, low_open, high_open, integer) + (" or null" if optional else "")
        raise ValueError(f"{name} must {what}, got {value!r}" + (f" ({hint})" if hint else ""))
    return int(value) if integer else float(value)
