"""The library's type aliases, in a module that imports only ``typing`` and ``torch``, so that every
layer (``sdes`` first) can name them without importing another part of the package."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

ScoreFn = Callable[[Tensor, Tensor], Tensor]
"""A score function ``score(x, t) -> grad_x log p_t(x)``: ``x`` is ``(B, *dims)``, ``t`` is ``(B,)``."""
