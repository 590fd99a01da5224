"""The numerical solvers the library drives, and their orders, as data (one table for the samplers
and the likelihood): torchdiffeq's Runge-Kutta methods and torchsde's SDE schemes."""

from __future__ import annotations

ODE_FIXED_GRID_ORDERS = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}
"""torchdiffeq's fixed-grid Runge-Kutta methods and their orders (the tests fit these)."""

ODE_ADAPTIVE_ORDERS = {"adaptive_heun": 2, "fehlberg2": 2, "bosh3": 3, "dopri5": 5, "dopri8": 8}
"""torchdiffeq's embedded adaptive Runge-Kutta methods and their orders."""

SDE_STRONG_ORDERS = {"euler": 1.0, "milstein": 1.0, "srk": 1.5, "reversible_heun": 1.0}
"""torchsde's schemes and their strong orders for the additive noise of these SDEs."""
