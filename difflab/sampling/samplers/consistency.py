"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Alg. 1).

A consistency model f maps any noisy x at level sigma to its ODE trajectory's origin, so one call
is a sample; more calls alternate denoising and re-noising to the next, lower level:

    x0 = f(x, s_i);   x = x0 + s_{i+1} z   (z fresh noise),

and the last call's x0 is the sample. Song et al. re-noise to sqrt(s_{i+1}^2 - s_min^2) for a model
whose boundary is at s_min; difflab's consistency models take theirs at sigma = 0 (see
difflab.acceleration.consistency), so it is s_{i+1}. Made for consistency models and other distilled
few-step denoisers; with an ordinary denoiser (x0 = E[x0 | x]) it does not converge to the data
distribution. NFE = n.
"""

from __future__ import annotations

from torch import Tensor

from difflab.sampling.registry import SamplerGrid, register
from difflab.sampling.transitions import Step


@register("consistency", order=1, stochastic=True)
def consistency(grid: SamplerGrid, x: Tensor, *, step: Step) -> Tensor:
    """Multistep consistency sampling: x0 = f(x, s), x' = x0 + s' z (Song et al. 2023, Alg. 1)."""
    for i in range(grid.steps):
        denoised = grid.denoise(x, i)
        if grid[i + 1] == 0:
            return denoised
        x, _ = step(i, denoised, grid[i + 1])
    return x
