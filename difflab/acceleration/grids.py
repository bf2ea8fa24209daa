"""Step grids for few-step students.

A grid of n steps between sigma_min and sigma_max spends its last step from sigma_min to 0, which is
wasted at 2-4 steps: a distilled or consistency model returns (almost) its input at sigma_min. The
few-step grid of n steps takes the n highest levels of the same grid with n + 1 levels and then 0:
Karras levels for consistency models (Song et al. 2023 sample 2 steps at sigma_max and one middle
level), t = 1, 1/2, 0 for a 2-step rectified flow (uniform in t).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from difflab import schedules

__all__ = ["few_step_grid"]


def few_step_grid(
    steps: int,
    sigma_min: float,
    sigma_max: float,
    schedule: str = "karras",
    **options: Any,
) -> Tensor:
    """[sigma_max, ..., 0]: the ``steps`` highest levels of ``schedule`` with ``steps + 1`` levels
    (sigma_min dropped), then 0; 1 step is [sigma_max, 0]. ``options`` go to the grid (e.g.
    ``process=``, ``rho=``)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    levels = schedules.get(schedule)(steps + 1, sigma_min, sigma_max, **options)
    return torch.cat([levels[:steps], levels.new_zeros(1)])
