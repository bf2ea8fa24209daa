"""First- and second-order probability-flow ODE samplers: Euler/DDIM, Heun, DPM-Solver++(2M)."""

from __future__ import annotations

import functools
import math

from torch import Tensor

from difflab.sampling.registry import SamplerGrid, register
from difflab.sampling.steps import ddim_step, final_step, heun_step, previous_eps


@register("euler", order=1, aliases=("ddim",))
def euler(grid: SamplerGrid, x: Tensor, *, final: str = "tau") -> Tensor:
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
def heun(grid: SamplerGrid, x: Tensor, *, final: str = "tau") -> Tensor:
    """Heun's 2nd order: x' = x + (s'-s)(d + d')/2, d = (x - D)/s (Karras et al. 2022, Alg. 1)."""
    last = None  # (x, D, sigma) of the previous step, for the final step's history
    for i in range(grid.steps):
        s, nxt = grid[i], grid[i + 1]
        denoised = grid.denoise(x, i)
        if nxt == 0:
            return final_step(x, denoised, final, s, previous_eps(last))
        next_stage = functools.partial(grid.denoise, i=i + 1, stage=True)
        x, last = heun_step(x, denoised, s, nxt, next_stage), (x, denoised, s)
    return x


@register("dpmpp_2m", order=2)
def dpmpp_2m(grid: SamplerGrid, x: Tensor, *, final: str = "tau") -> Tensor:
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
