"""One probability-flow ODE step of a teacher denoiser with a noise level per sample, the move every
distillation recipe imitates (x = x0 + sigma eps coordinates, DESIGN.md).

    euler (DDIM):  x' = D + (s'/s)(x - D)                                   (Song et al. 2021)
    heun:          x' = x + (s' - s)(e + e') / 2,  e = (x - D(x, s)) / s,
                   e' = (x_E - D(x_E, s')) / s' at the Euler point x_E       (Karras et al. 2022)

Heun falls back to Euler for a sample whose step ends at s' = 0 (the last interval), as the
difflab samplers do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from difflab.core.tensors import append_dims, check_name

__all__ = ["SOLVERS", "ode_step"]

SOLVERS = ("euler", "heun")


def ode_step(
    denoiser: Callable[..., Tensor],
    x: Tensor,
    sigma: Tensor,
    sigma_next: Tensor,
    solver: str = "euler",
    **cond: Any,
) -> Tensor:
    """x at ``sigma_next`` [B] from x at ``sigma`` [B] (> 0) by one step of ``solver``."""
    check_name("teacher solver", solver, SOLVERS)
    s, s_next = append_dims(sigma, x.ndim), append_dims(sigma_next, x.ndim)
    denoised = denoiser(x, sigma, **cond)
    x_euler = denoised + (s_next / s) * (x - denoised)
    if solver == "euler":
        return x_euler
    last = sigma_next == 0
    at = torch.where(last, sigma, sigma_next)  # never evaluate at sigma = 0; those rows use Euler
    denoised_next = denoiser(x_euler, at, **cond)
    eps, eps_next = (x - denoised) / s, (x_euler - denoised_next) / append_dims(at, x.ndim)
    x_heun = x + (s_next - s) * (eps + eps_next) / 2
    return torch.where(append_dims(last, x.ndim), x_euler, x_heun)
