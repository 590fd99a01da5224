"""The one range check behind every option's validation: kinds, bounds and the message."""

from __future__ import annotations

import math

import pytest

from sde_diffusion._checks import check_range


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        (-1, dict(low=0, low_open=True, hint="try 1e-3"), "x must be a positive number, got -1 (try 1e-3)"),
        (0, dict(low=1, integer=True), "x must be an integer >= 1, got 0"),
        (2.5, dict(low=0, integer=True), "x must be an integer >= 0, got 2.5"),
        (1.0, dict(low=0, high=1, high_open=True), "x must lie in [0, 1), got 1.0"),
        (2.5, dict(low=1, high=16, integer=True), "x must be an integer in [1, 16], got 2.5"),
        (True, dict(low=0), "x must be a number >= 0, got True"),
        (math.nan, dict(low=0), "x must be a number >= 0, got nan"),
        (math.inf, dict(), "x must be a finite number, got inf"),
        ("3", dict(low=0), "x must be a number >= 0, got '3'"),
        (None, dict(low=1, integer=True), "x must be an integer >= 1, got None"),
        (0, dict(low=1, integer=True, optional=True), "x must be an integer >= 1 or null, got 0"),
    ],
)
def test_out_of_range_values_name_the_option_the_bound_and_the_value(value, kwargs, message):
    with pytest.raises(ValueError) as info:
        check_range("x", value, **kwargs)
    assert str(info.value) == message


def test_values_in_range_come_back_as_int_or_float():
    assert check_range("x", 3.0, low=1, integer=True) == 3 and isinstance(check_range("x", 3.0, low=1, integer=True), int)
    assert check_range("x", 1, low=0, high=1) == 1.0 and isinstance(check_range("x", 1, low=0, high=1), float)
    assert check_range("x", None, optional=True) is None
    assert check_range("x", 0.5, low=0, high=1, low_open=True, high_open=True) == 0.5
