"""Consistency distillation and consistency training (Song et al. 2023, "Consistency Models"), with
the improvements of iCT (Song & Dhariwal 2023): pseudo-Huber metric, lambda = 1/(s_{n+1} - s_n),
log-normal choice of levels, a doubling curriculum of discretization steps, and the student itself
(no EMA) as the target network.

A consistency function maps any point of an ODE trajectory to its origin: f(x, sigma) = x0 for all
sigma. Here f is the student's difflab denoiser D_theta, whose wrappers (EDM's c_skip / c_out, or
x0-, v-, eps- and velocity-prediction) all give f(x, 0) = x, the boundary condition (Song et al. use
sigma_min instead of 0; at sigma_min = 0.002 EDM's c_skip is 1 - 1.6e-5). Training pulls f at
adjacent levels s_n < s_{n+1} of the same trajectory together:

    L = lambda(s_n, s_{n+1}) d( f_theta(x_{n+1}, s_{n+1}), sg f_theta(x_n, s_n) ),
    x_{n+1} = x0 + s_{n+1} z,
    x_n = one teacher ODE step from x_{n+1} to s_n      (distillation, CD)
    x_n = x0 + s_n z                                     (training, CT: the one-sample estimate of the
                                                          same step, Song et al. 2023, Thm. 2)

with d(a, b) = sqrt(||a - b||^2 + c^2) - c (pseudo-Huber, c = 0.00054 sqrt(dim)) or ||a - b||^2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from difflab import schedules
from difflab.acceleration.teacher import ode_step
from difflab.core.tensors import check_name

__all__ = [
    "INDEX_DISTRIBUTIONS",
    "METRICS",
    "consistency_levels",
    "consistency_loss",
    "curriculum",
    "draw_levels",
    "pseudo_huber",
]

METRICS = ("pseudo_huber", "l2")
INDEX_DISTRIBUTIONS = ("lognormal", "uniform")


def pseudo_huber(a: Tensor, b: Tensor, c: float | None = None) -> Tensor:
    """sqrt(||a - b||^2 + c^2) - c per sample, c = 0.00054 sqrt(dim) by default (Song & Dhariwal
    2023, sec. 3.3): ~||a - b||^2 / 2c near 0, ~||a - b|| far away."""
    diff = (a - b).flatten(1)
    if c is None:
        c = 0.00054 * math.sqrt(diff.shape[1])
    return torch.sqrt(diff.square().sum(1) + c * c) - c


def consistency_levels(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """s_1 < ... < s_n: the Karras et al. (2022) levels between sigma_min and sigma_max, increasing
    (Song et al. 2023, sec. 5), float64."""
    if n < 2:
        raise ValueError(f"consistency training needs at least 2 levels, got {n}")
    karras = schedules.get("karras")
    return karras(n, sigma_min, sigma_max, rho=rho, append_zero=False).flip(0)


def curriculum(step: int, total: int, start: int, end: int) -> int:
    """N(k) = min(s0 2^floor(k / K'), s1) + 1 levels at step k of K, K' = floor(K / (log2(s1/s0) + 1))
    (iCT's exponential curriculum, Song & Dhariwal 2023, sec. 3.4); start = end is a fixed N."""
    if not 1 <= start <= end:
        raise ValueError(f"need 1 <= start <= end discretization steps, got {start}, {end}")
    per = max(1, total // (int(math.log2(end / start)) + 1))
    return min(start * 2 ** (step // per), end) + 1


def draw_levels(
    levels: Tensor,
    n: int,
    generator: torch.Generator | None = None,
    kind: str = "lognormal",
    p_mean: float = -1.1,
    p_std: float = 2.0,
) -> tuple[Tensor, Tensor]:
    """(s_n, s_{n+1}) [n] each: adjacent pairs of ``levels`` drawn uniformly or with
    p(i) ~ erf((ln s_{i+1} - P_mean) / sqrt(2) P_std) - erf((ln s_i - P_mean) / sqrt(2) P_std)
    (iCT's log-normal choice, Song & Dhariwal 2023, sec. 3.5)."""
    check_name("level distribution", kind, INDEX_DISTRIBUTIONS)
    if kind == "uniform":
        weights = torch.ones(len(levels) - 1, dtype=torch.float64)
    else:
        cdf = torch.erf((levels.log() - p_mean) / (math.sqrt(2) * p_std))
        weights = (cdf[1:] - cdf[:-1]).clamp(min=0)
    index = torch.multinomial(weights, n, replacement=True, generator=generator)
    return levels[index], levels[index + 1]


def consistency_loss(
    student: Callable[..., Tensor],
    x0: Tensor,
    z: Tensor,
    sigma: Tensor,
    sigma_next: Tensor,
    teacher: Callable[..., Tensor] | None = None,
    solver: str = "heun",
    metric: str = "pseudo_huber",
    **cond: Any,
) -> Tensor:
    """Per-sample lambda d(f(x_{n+1}, s_{n+1}), sg f(x_n, s_n)) for levels ``sigma`` = s_n <
    ``sigma_next`` = s_{n+1} [B]: consistency distillation through ``teacher``'s ``solver`` step,
    consistency training when ``teacher`` is None."""
    check_name("consistency metric", metric, METRICS)
    if not bool((sigma_next > sigma).all()):
        raise ValueError("consistency pairs need sigma < sigma_next for every sample")
    view = (-1,) + (1,) * (x0.ndim - 1)
    x_next = x0 + sigma_next.to(x0.dtype).view(view) * z
    with torch.no_grad():
        if teacher is None:
            x = x0 + sigma.to(x0.dtype).view(view) * z
        else:
            x = ode_step(teacher, x_next, sigma_next, sigma, solver, **cond)
        target = student(x, sigma, **cond)
    out = student(x_next, sigma_next, **cond)
    weight = (sigma_next - sigma).reciprocal().to(out.dtype)
    if metric == "l2":
        return weight * (out - target).flatten(1).square().sum(1)
    return weight * pseudo_huber(out, target)
