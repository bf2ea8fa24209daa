"""Guidance whose step renoises with a different eps than its x0 estimate implies (CFG++), expressed
as a plain denoiser on a known grid.

A DDIM/Euler step from sigma to sigma' is x' = D + sigma' (x - D) / sigma. A method that jumps to its
x0 estimate X but renoises with the eps of another estimate Y, x' = X + sigma' (x - Y) / sigma, is
that same step with the denoiser

    D' = (X - r Y) / (1 - r),   r = sigma' / sigma,

so a pair denoiser (x, sigma) -> (X, Y) plus the grid is all it needs: :func:`renoise` builds D'.
With the Euler/DDIM sampler (``final="denoised"`` for the last step x = X) it reproduces the method
exactly; any other sampler runs D' as an ordinary denoiser (its first-order part is the method's step).
At sigma' = 0 and at sigma = inf, r = 0 and D' = X.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from difflab.core.tensors import as_tensor, broadcast_sigma
from difflab.guidance.guided import Denoiser, label_branches

__all__ = ["cfg_pp", "renoise"]

Pair = Callable[..., tuple[Tensor, Tensor]]


def renoise(pair: Pair, sigmas: Tensor | Sequence[float]) -> Denoiser:
    """The denoiser D' = (X - r Y)/(1 - r), r = sigma_next / sigma, whose Euler/DDIM step on the grid
    ``sigmas`` is x' = X + sigma_next (x - Y) / sigma for (X, Y) = pair(x, sigma, **cond) (module
    docstring). Evaluations must be at points of the grid (a ValueError names one that is not)."""
    grid = as_tensor(sigmas, torch.float64).detach().cpu().flatten()
    if grid.ndim != 1 or len(grid) < 2 or bool((grid[1:] >= grid[:-1]).any()):
        raise ValueError("renoise needs the sampler's grid: a decreasing 1-D tensor of sigmas")
    following = torch.cat([grid[1:], grid.new_zeros(1)])
    ratio = torch.where(torch.isinf(grid), 0.0, following / grid).nan_to_num(0.0)  # 0/0 at sigma 0

    def renoised(x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        s = as_tensor(sigma, torch.float64).detach().cpu().reshape(-1)
        match = torch.isclose(s[:, None], grid[None], rtol=1e-5, atol=0.0) | (
            torch.isinf(s[:, None]) & torch.isinf(grid[None])
        )
        off = ~match.any(1)
        if bool(off.any()):
            raise ValueError(
                f"renoise: sigma = {float(s[off][0]):g} is not a point of its grid; it needs a "
                "sampler that evaluates only on the grid (e.g. euler)"
            )
        r = ratio[match.int().argmax(1)].reshape(as_tensor(sigma).shape)
        r = broadcast_sigma(r.to(device=x.device, dtype=x.dtype), x)
        big_x, y = pair(x, sigma, **cond)
        return (big_x - r * y) / (1 - r)

    return renoised


def cfg_pp(
    denoiser: Denoiser, scale: float, sigmas: Tensor | Sequence[float], null_label: int = -1
) -> Denoiser:
    """CFG++ (Chung et al. 2024): x' = D_u + lam (D_c - D_u) + sigma' eps_u, the guided x0 estimate
    renoised with the unconditional eps, lam = ``scale`` in [0, 1]; as a plain denoiser on the grid
    ``sigmas`` through :func:`renoise`. On Euler/DDIM it equals CFG with the step-dependent scale
    w_i = lam sigma_i / (sigma_i - sigma_{i+1})."""
    if not 0 <= scale <= 1:
        raise ValueError(f"CFG++ scale lambda must be in [0, 1], got {scale}")

    def pair(
        x: Tensor, sigma: Tensor | float, labels: Tensor, **cond: Any
    ) -> tuple[Tensor, Tensor]:
        both = torch.stack([labels, torch.full_like(labels, null_label)], 1)
        d_cond, d_uncond = label_branches(denoiser, x, sigma, both, **cond)
        return d_uncond + scale * (d_cond - d_uncond), d_uncond

    return renoise(pair, sigmas)
