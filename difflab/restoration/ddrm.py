"""Denoising diffusion restoration models (DDRM; Kawar, Elad, Ermon & Song 2022, "Denoising Diffusion
Restoration Models"): ancestral sampling in the spectral coordinates of A = U S V^T."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from difflab.restoration.measurement import Measurement, takes_measurement
from difflab.restoration.steps import checked_grid
from difflab.sampling.registry import Callback, noise_source

__all__ = ["ddrm"]


@takes_measurement
def ddrm(
    denoiser: Callable[..., Tensor],
    measurement: Measurement,
    x: Tensor,
    sigmas: Tensor | Sequence[float],
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    callback: Callback | None = None,
    cond: dict[str, Any] | None = None,
    eta: float = 0.85,
    eta_b: float = 1.0,
) -> Tensor:
    """DDRM (Kawar et al. 2022, Eqs. 7-8) from sigma to sigma', in x-bar = V^T x with
    y-bar = S^+ U^T y (noise sigma_y / s_i on coordinate i), x-bar_D = V^T D(x, sigma) and z ~ N(0, I):

        s_i = 0:                 x-bar' = x-bar_D + sqrt(1 - eta^2) sigma' (x-bar - x-bar_D) / sigma + eta sigma' z
        sigma' <  sigma_y / s_i: x-bar' = x-bar_D + sqrt(1 - eta^2) sigma' (y-bar - x-bar_D) s_i / sigma_y + eta sigma' z
        sigma' >= sigma_y / s_i: x-bar' = (1 - eta_b) x-bar_D + eta_b y-bar + sqrt(sigma'^2 - eta_b^2 sigma_y^2 / s_i^2) z

    and the start x-bar_i = y-bar_i + sqrt(sigma_0^2 - sigma_y^2 / s_i^2) eps_i where sigma_0 >= sigma_y / s_i
    (eps = x / sigma_0, the given noise; other coordinates keep it). Defaults eta = 0.85,
    eta_b = 1 are the paper's. Needs a LinearOperator. NFE = steps, no gradients.
    """
    op = measurement.linear_operator("ddrm")
    if not (0 <= eta <= 1 and 0 <= eta_b <= 1):
        raise ValueError(f"eta and eta_b must be in [0, 1], got {eta} and {eta_b}")
    grid = checked_grid(denoiser, measurement, x, sigmas, cond, callback)
    noise = noise_source(x, generator)
    y, noise_std = measurement.y, measurement.noise_std
    r, s = op.rank, op.s(x)
    y_bar = op.ut(y)[:, :r] / s
    s_y = noise_std / s  # y-bar's noise level per coordinate
    inv_s_y = s / noise_std if noise_std > 0 else torch.zeros_like(s)  # only used where s_y > 0
    keep = math.sqrt(1 - eta * eta)

    x_bar = op.vt(x)
    top = grid[0]
    start = top >= s_y
    spread = (top * top - s_y.square()).clamp(min=0).sqrt()
    x_bar[:, :r] = torch.where(start, y_bar + spread * x_bar[:, :r] / top, x_bar[:, :r])
    x = op.v(x_bar)
    for i in range(grid.steps):
        s_now, nxt = grid[i], grid[i + 1]
        d_bar = op.vt(grid.denoise(x, i))
        z = noise().flatten(1) if nxt > 0 else torch.zeros_like(x_bar)
        dn = d_bar[:, r:]
        null = dn + (keep * nxt / s_now) * (x_bar[:, r:] - dn) + (eta * nxt) * z[:, r:]
        dm = d_bar[:, :r]
        noisy = dm + (keep * nxt) * inv_s_y * (y_bar - dm) + (eta * nxt) * z[:, :r]
        spread = (nxt * nxt - (eta_b * s_y).square()).clamp(min=0).sqrt()
        measured = (1 - eta_b) * dm + eta_b * y_bar + spread * z[:, :r]
        x_bar = torch.cat([torch.where(nxt >= s_y, measured, noisy), null], 1)
        x = op.v(x_bar)
    return x
