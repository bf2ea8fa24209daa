"""Euler steps in sigma with combined slopes: the gradient-estimation sampler (Permenter & Yuan 2024)
and Heun++2 (ComfyUI's ``heunpp2``).

Both step x' = x + (s' - s) d-bar, d-bar a combination of slopes d = (x - D) / sigma (= eps, the
probability flow's dx/dsigma). Their combinations are not consistent second-order quadratures, so
both are first-order methods (measured against the exact flow in the tests); what they offer is
accuracy at a few steps, which the benchmark measures. The last interval into sigma = 0 is
:func:`~difflab.sampling.steps.final_step` (option ``final``; "denoised" is ComfyUI's x = D).
"""

from __future__ import annotations

import math

from torch import Tensor

from difflab.sampling.registry import SamplerGrid, register
from difflab.sampling.steps import check_final, combine, final_step, previous_eps

__all__ = ["gradient_estimation", "heunpp2"]


@register("gradient_estimation", order=1)
def gradient_estimation(
    grid: SamplerGrid, x: Tensor, *, ge_gamma: float = 2.0, final: str = "tau"
) -> Tensor:
    """Gradient estimation: x' = x + (s' - s)(gamma d + (1 - gamma) d_prev) (Permenter & Yuan 2024).

    "Interpreting and improving diffusion models from an optimization perspective", Alg. 2: the
    denoiser is an approximate projection, d = (x - D) / sigma a gradient of the distance to the
    data, and gamma > 1 extrapolates it from the last two evaluations (gamma = 2, the paper's and
    ComfyUI's ``ge_gamma``; gamma = 1 is Euler). The first step is Euler. First order: on steps of
    ratio q the local error is (s' - s)^2 d' ((gamma - 1)/q - 1/2), nonzero at gamma = 2 (variable
    step Adams-Bashforth 2 would need gamma = 1 + (s' - s) / 2(s - s_prev)). NFE = n."""
    if not math.isfinite(ge_gamma):
        raise ValueError(f"ge_gamma must be a finite number, got {ge_gamma}")
    check_final(final)
    last, d_prev = None, None
    for i in range(grid.steps):
        s, nxt = grid[i], grid[i + 1]
        denoised = grid.denoise(x, i)
        if nxt == 0:
            return final_step(x, denoised, final, s, previous_eps(last))
        d = (x - denoised).div_(s)
        dt = nxt - s
        if d_prev is None:
            x_next = x.add(d, alpha=dt)
        else:
            x_next = combine(x, 1.0, [dt * ge_gamma, dt * (1 - ge_gamma)], [d, d_prev])
        x, d_prev, last = x_next, d, (x, denoised, s)
    return x


@register("heunpp2", order=1, nfe=lambda n: max(1, 3 * n - 3))
def heunpp2(grid: SamplerGrid, x: Tensor, *, final: str = "tau") -> Tensor:
    """Heun++2: x' = x + (s' - s)(w_1 d + w_2 d_2 + w_3 d_3), w_k = s_(i+k-1) / 3 s_0 (ComfyUI).

    d at (x, s), d_2 at the Euler point x_2 = x + (s' - s) d at s', d_3 at the Euler point from x_2
    at the level s'' after s', w_1 = 1 - w_2 - w_3; a step with no level s'' > 0 after it takes d
    and d_2 with w_2 = s' / 2 s_0, and the final interval into 0 is final_step. From Carzit's
    sd-webui-samplers-scheduler (no paper); s_0 is the grid's first level. The weights sum to 1 but
    are not a quadrature of the slope: second order would need w_2 + 2 w_3 = 1/2, which the
    sigma-dependent weights meet only where s' + 2 s'' = 3 s_0 / 2, and as sigma / s_0 -> 0 the step
    becomes Euler spending 3 evaluations. First order (measured). ComfyUI's s_churn is not offered
    (the stochastic samplers churn), and on a grid ending above 0 its last step is the two-slope
    one, where ComfyUI's is Euler (as every difflab sampler, a grid ending above 0 ends with a
    normal step). NFE = 3 per interval, 2 for the one before the last, 1 for the last: 3n - 3
    (n >= 2)."""
    check_final(final)
    top, last = grid[0], None
    for i in range(grid.steps):
        s, nxt = grid[i], grid[i + 1]
        denoised = grid.denoise(x, i)
        if nxt == 0:
            return final_step(x, denoised, final, s, previous_eps(last))
        d = (x - denoised).div_(s)
        dt = nxt - s
        x_2 = x.add(d, alpha=dt)
        d_2 = (x_2 - grid.denoise(x_2, i + 1, stage=True)).div_(nxt)
        last = (x, denoised, s)
        after = grid[i + 2] if i + 2 <= grid.steps else 0.0
        if after == 0:
            w_2 = nxt / (2 * top)
            x = combine(x, 1.0, [dt * (1 - w_2), dt * w_2], [d, d_2])
            continue
        x_3 = x_2.add(d_2, alpha=after - nxt)
        d_3 = (x_3 - grid.denoise(x_3, i + 2, stage=True)).div_(after)
        w_2, w_3 = nxt / (3 * top), after / (3 * top)
        x = combine(x, 1.0, [dt * (1 - w_2 - w_3), dt * w_2, dt * w_3], [d, d_2, d_3])
    return x
