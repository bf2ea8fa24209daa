"""One probability-flow ODE step of a teacher denoiser with a noise level per sample, the move every
distillation recipe imitates (x = x0 + sigma eps coordinates, DESIGN.md).

    euler (DDIM):  x' = D + (s'/s)(x - D)                                   (Song et al. 2021)
    heun:          x' = x + (s' - s)(e + e') / 2,  e = (x - D(x, s)) / s,
                   e' = (x_E - D(x_E, s')) / s' at the Euler point x_E       (Karras et al. 2022)

both the samplers' own steps (:mod:`difflab.sampling.steps`), with a level per sample.

Heun falls back to Euler for a sample whose step ends at s' = 0 (the last interval), as the
difflab samplers do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from difflab.core.tensors import append_dims, check_name
from difflab.sampling.steps import ddim_step, heun_step

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
    x_euler = ddim_step(x, denoised, s, s_next)
    if solver == "euler":
        return x_euler
    last = sigma_next == 0
    at = torch.where(last, sigma, sigma_next)  # never evaluate at sigma = 0; those rows use Euler
    x_heun = heun_step(x, denoised, s, append_dims(at, x.ndim), lambda u: denoiser(u, at, **cond))
    return torch.where(append_dims(last, x.ndim), x_euler, x_heun)
