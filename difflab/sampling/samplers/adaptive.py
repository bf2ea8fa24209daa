"""Adaptive-step probability-flow ODE sampler with a step size and error norm per sample."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from difflab.sampling.registry import SamplerGrid, register
from difflab.sampling.steps import combine, final_step

# Bogacki & Shampine (1989) 3(2) pair: stage nodes, the 3rd-order weights, and 3rd minus 2nd-order
# weights (the 4th stage is the first stage of the next step: first same as last).
_BS_C = (0.5, 0.75)
_BS_B = (2 / 9, 1 / 3, 4 / 9)
_BS_E = (-5 / 72, 1 / 12, 1 / 9, -1 / 8)


@register("adaptive", order=3, adaptive=True, nfe=lambda n: 0)
def adaptive(
    grid: SamplerGrid,
    x: Tensor,
    *,
    rtol: float = 1e-3,
    atol: float = 1e-3,
    h_init: float = 0.5,
    max_nfe: int = 10_000,
    final: str = "tau",
    stats: dict[str, Any] | None = None,
) -> Tensor:
    """Bogacki-Shampine 3(2) on dx/d(log sigma) = x - D(x, sigma), one step size per sample (Bogacki &
    Shampine 1989; error control as Hairer et al., Solving ODEs I, II.4).

    In rho = log sigma the flow's Jacobian I - dD/dx has eigenvalues in [0, 1] (exactly so for a
    Gaussian), so the system is not stiff and an explicit embedded pair fits. Each sample keeps its own
    rho and step; its error norm is the RMS over its coordinates of err / (atol + rtol |x|), and a step
    is accepted when it is <= 1. The grid supplies only its endpoints: sigmas[0] and the last positive
    sigma (then the final step into 0 when the grid ends in 0). Samples are evaluated as sub-batches
    (per-sample conditioning tensors are subset alike), so a sample's result does not depend on its
    batch. ``stats`` (a dict) receives ``nfe`` (denoiser calls), ``iterations``, ``rejected`` and
    ``nfe_per_sample``. The active set is read on the host each iteration (adaptive control needs it).
    """
    positive = [s for s in grid.sigmas if s > 0]
    if len(positive) < 2:
        raise ValueError(
            "the adaptive sampler needs a positive sigma_min in the grid, e.g. [sigma_max, sigma_min, 0]"
        )
    if rtol <= 0 or atol < 0:
        raise ValueError(f"need rtol > 0 and atol >= 0, got rtol={rtol}, atol={atol}")
    x, n = x.clone(), x.shape[0]  # updated in place, row by row
    rho_end = math.log(positive[-1])
    rho = torch.full((n,), math.log(positive[0]), dtype=torch.float64, device=x.device)
    h = torch.full_like(rho, -abs(h_init))
    calls = 0
    per_sample = torch.zeros(n, dtype=torch.long, device=x.device)

    def slope(xs: Tensor, rhos: Tensor, rows: Tensor | None) -> Tensor:  # dx/drho = x - D
        nonlocal calls
        calls += 1
        if rows is None:
            per_sample.add_(1)
        else:
            per_sample[rows] += 1
        return xs - grid.evaluate(xs, rhos.exp().to(x.dtype), rows)

    k1 = slope(x, rho, None)
    active, iterations, rejected = torch.arange(n, device=x.device), 0, 0
    while len(active):
        if calls + 3 > max_nfe:
            raise RuntimeError(
                f"adaptive sampler exceeded max_nfe={max_nfe} (rtol={rtol}, atol={atol})"
            )
        everyone = len(active) == n  # no gathers while every sample is still integrating
        rows = None if everyone else active
        xa, ra, ka, ha = (
            (x, rho, k1, h) if everyone else (x[active], rho[active], k1[active], h[active])
        )
        ha = torch.maximum(ha, rho_end - ra)  # both negative: do not step past the end
        hc = ha.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        k2 = slope(torch.addcmul(xa, hc, ka, value=_BS_C[0]), ra + _BS_C[0] * ha, rows)
        k3 = slope(torch.addcmul(xa, hc, k2, value=_BS_C[1]), ra + _BS_C[1] * ha, rows)
        x_new = torch.addcmul(xa, hc, combine(ka, _BS_B[0], _BS_B[1:], [k2, k3]))
        k4 = slope(x_new, ra + ha, rows)
        err = hc * combine(ka, _BS_E[0], _BS_E[1:], [k2, k3, k4])
        scale = torch.maximum(xa.abs(), x_new.abs()).mul_(rtol).add_(atol)
        norm = err.div_(scale).double().square().flatten(1).mean(1).sqrt()
        ok = norm <= 1
        done_rows = active[ok]
        x[done_rows], k1[done_rows] = x_new[ok], k4[ok]
        rho[done_rows] = torch.where(ha[ok] == rho_end - ra[ok], rho_end, ra[ok] + ha[ok])
        h[active] = ha * (0.9 * norm.clamp(min=1e-10) ** (-1 / 3)).clamp(0.2, 5.0)
        active = active[rho[active] > rho_end]
        iterations, rejected = iterations + 1, rejected + int((~ok).sum())
    if stats is not None:
        stats.update(nfe=calls, iterations=iterations, rejected=rejected, nfe_per_sample=per_sample)
    if grid.sigmas[-1] == 0:
        x = final_step(x, x - k1, final, positive[-1])
    return x
