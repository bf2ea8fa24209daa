"""Diffusion posterior sampling (DPS; Chung et al. 2023, "Diffusion Posterior Sampling for General
Noisy Inverse Problems"), for any differentiable A."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from difflab.restoration.measurement import Measurement, takes_measurement
from difflab.restoration.steps import checked_grid, denoise_at, value_and_grad
from difflab.sampling.registry import Callback, noise_source
from difflab.sampling.samplers.stochastic import ancestral_split
from difflab.sampling.steps import check_final, ddim_step, final_step

__all__ = ["dps"]


@takes_measurement
def dps(
    denoiser: Callable[..., Tensor],
    measurement: Measurement,
    x: Tensor,
    sigmas: Tensor | Sequence[float],
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    callback: Callback | None = None,
    cond: dict[str, Any] | None = None,
    zeta: float = 1.0,
    final: str = "tau",
) -> Tensor:
    """DPS: x' = DDPM(x) - zeta_i grad_x ||y - A(D(x))||^2, zeta_i = zeta / ||y - A(D(x))|| per
    sample (Chung et al. 2023, Alg. 1 with the step size of their appendix; the official code's
    ``scale`` is 2 zeta, as it differentiates the norm itself).

    The paper's DDPM runs on a VP process x_vp = x / sqrt(1 + sigma^2); its step, mapped into
    x = x0 + sigma eps, is the ancestral DDIM(eta = 1) step of ``ddim_eta`` and its correction is
    scaled by 1 / (a a') = sqrt((1 + sigma^2)(1 + sigma'^2)), so the update equals the paper's on
    every grid. The measurement's noise_std does not enter (zeta replaces 1 / noise_std^2). The
    last step into sigma = 0 is the sampler's ``final`` step ("tau", or the paper's "denoised").
    NFE = steps, each with one backward pass through the denoiser. A biased approximation: see
    docs/inverse.md.
    """
    check_final(final, "dps")
    if not zeta >= 0:
        raise ValueError(f"zeta must be >= 0, got {zeta}")
    grid = checked_grid(denoiser, measurement, x, sigmas, cond, callback)
    noise = noise_source(x, generator)
    operator, y = measurement.operator, measurement.y

    def residual_norm(d: Tensor) -> Tensor:
        return (y - operator(d)).flatten(1).norm(dim=1)

    for i in range(grid.steps):
        s, nxt = grid[i], grid[i + 1]
        d, _, grad = value_and_grad(denoise_at(grid, i), x, residual_norm)
        if callback is not None:
            callback(i, s, x, d)
        if nxt == 0:
            x_next = final_step(x, d, final, s)
        else:
            down, up = ancestral_split(s, nxt, 1.0)
            x_next = ddim_step(x, d, s, down) + up * noise()
        # zeta_i grad ||r||^2 = (zeta / ||r||) 2 ||r|| grad ||r|| = 2 zeta grad ||r||
        x = x_next - (2 * zeta * math.sqrt((1 + s * s) * (1 + nxt * nxt))) * grad
    return x
