"""First- and second-order probability-flow ODE samplers: Euler/DDIM, Heun, DPM-Solver++(2M)."""

from __future__ import annotations

import math

from torch import Tensor

from difflab.sampling.registry import Grid, register
from difflab.sampling.steps import ddim_step, final_step, previous_eps


@register("euler", order=1, aliases=("ddim",))
def euler(grid: Grid, x: Tensor, *, final: str = "tau") -> Tensor:
    """Euler / DDIM (eta = 0): x' = D + (s'/s)(x - D) (Song et al. 2021; Karras et al. 2022, Alg. 1)."""
    last = None  # (x, D, sigma) of the previous step, for the final step's history
    for i in range(grid.steps):
        denoised = grid.denoise(x, i)
        nxt = grid[i + 1]
        if nxt == 0:
            return final_step(x, denoised, final, grid[i], previous_eps(last))
        x, last = ddim_step(x, denoised, grid[i], nxt), (x, denoised, grid[i])
    return x


@register("heun", order=2, nfe=lambda n: 2 * n - 1)
def heun(grid: Grid, x: Tensor, *, final: str = "tau") -> Tensor:
    """Heun's 2nd order: x' = x + (s'-s)(d + d')/2, d = (x - D)/s (Karras et al. 2022, Alg. 1)."""
    previous = None
    for i in range(grid.steps):
        s, nxt = grid[i], grid[i + 1]
        denoised = grid.denoise(x, i)
        if nxt == 0:
            return final_step(x, denoised, final, s, previous)
        d = (x - denoised) / s
        previous = (d, s)
        x_pred = x + (nxt - s) * d
        d_next = (x_pred - grid.denoise(x_pred, i + 1, stage=True)) / nxt
        x = x + (nxt - s) / 2 * (d + d_next)
    return x


@register("dpmpp_2m", order=2)
def dpmpp_2m(grid: Grid, x: Tensor, *, final: str = "tau") -> Tensor:
    """DPM-Solver++(2M): x' = (s'/s) x - expm1(-h) [(1 + 1/2r) D - D_prev / 2r], h = log(s/s'),
    r = h_prev / h (Lu et al. 2022b, Alg. 2)."""
    prev, h_prev, last = None, 0.0, None
    for i in range(grid.steps):
        s, nxt = grid[i], grid[i + 1]
        denoised = grid.denoise(x, i)
        if nxt == 0:
            return final_step(x, denoised, final, s, previous_eps(last))
        h = math.log(s / nxt)
        d = denoised
        if prev is not None:
            k = h / (2 * h_prev)
            d = (1 + k) * denoised - k * prev
        x, last = (nxt / s) * x - math.expm1(-h) * d, (x, denoised, s)
        prev, h_prev = denoised, h
    return x
