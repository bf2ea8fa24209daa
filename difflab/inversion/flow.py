"""Probability-flow inversion: the ODE dx/dsigma = eps(x, sigma) = (x - D(x, sigma)) / sigma solved
upwards, from the input at sigma_min to the noise at sigma_max (Song et al. 2021, "DDIM inversion").

Sampling it back down with the same solver is not the identity: each direction's step evaluates
the denoiser at its own start, so the two paths differ by the solver's local error (the known DDIM
inversion drift). The ``ddim`` method can remove that with fixed-point iterations per step: the
latent whose DDIM step lands exactly on the inverted state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from torch import Tensor

from difflab.inversion.base import Guide, Latent, Method, latent, register
from difflab.sampling import get as sampler
from difflab.sampling.steps import ddim_step

__all__ = ["ddim", "ddim_path", "dpmpp_2m"]


def ddim(guide: Guide, x: Tensor, sigmas: list[float], *, refine: int = 0) -> Latent:
    """DDIM inversion x_i = x_{i+1} + (s_i - s_{i+1}) eps(x_{i+1}, s_{i+1}), then ``refine``
    fixed-point iterations x_i <- x_{i+1} + (1 - s_{i+1}/s_i)(x_i - D(x_i, s_i)) (Song et al. 2021;
    Pan et al. 2023).

    The iteration solves the sampler's own step (x_{i+1} = D_i + (s_{i+1}/s_i)(x_i - D_i)) for
    x_i, so as it converges DDIM sampling retraces the inversion exactly. Written in eps form its
    Jacobian is (1 - s_{i+1}/s_i)(I - dD/dx), a contraction wherever the denoiser's Jacobian
    (Cov[x0 | x] / s^2 for an exact denoiser) has eigenvalues in [0, 2); the equivalent D form
    x_i <- D + (s_i/s_{i+1})(x_{i+1} - D) used by some implementations has Jacobian
    (1 - s_i/s_{i+1}) dD/dx and diverges on steps with s_i > 2 s_{i+1}.
    """
    *_, top = ddim_path(guide, x, sigmas, refine)
    return latent(top, options={"refine": refine})


def ddim_path(guide: Guide, x: Tensor, sigmas: list[float], refine: int = 0) -> Iterator[Tensor]:
    """The states of :func:`ddim` inversion at sigmas[-2], sigmas[-3], ..., sigmas[0]."""
    if isinstance(refine, bool) or not isinstance(refine, int) or refine < 0:
        raise ValueError(f"refine must be an integer >= 0 (fixed-point iterations), got {refine!r}")
    grid = guide.grid(x, sigmas)
    for i in reversed(range(grid.steps)):
        lo, hi = sigmas[i + 1], sigmas[i]
        up = ddim_step(x, grid.denoise(x, i + 1), lo, hi)
        for _ in range(refine):
            up = x + (1 - lo / hi) * (up - grid.denoise(up, i))
        x = up
        yield x


def dpmpp_2m(guide: Guide, x: Tensor, sigmas: list[float]) -> Latent:
    """DPM-Solver++(2M) upwards: x' = (s'/s) x - expm1(-h) [(1 + 1/2r) D - D_prev / 2r] with
    h = log(s/s') < 0, r = h_prev / h (Lu et al. 2022b, Alg. 2; the multistep inverse of diffusers'
    DPMSolverMultistepInverseScheduler).

    Second order (first-order start-up step). Not refined: the sampler's step from x_i uses the
    history D(x_{i-1}) at a higher level, which the upward pass has not reached yet, so the exact
    inverse of a multistep sampler is a coupled system over the whole path, not a per-step fixed
    point (Hong et al. 2024 solve it approximately).
    """
    grid = guide.grid(x, sigmas)
    prev, h_prev = None, 0.0
    for i in reversed(range(grid.steps)):
        lo, hi = sigmas[i + 1], sigmas[i]
        denoised = grid.denoise(x, i + 1)
        h = math.log(lo / hi)
        d = denoised
        if prev is not None:
            k = h / (2 * h_prev)
            d = (1 + k) * denoised - k * prev
        x = (hi / lo) * x - math.expm1(-h) * d
        prev, h_prev = denoised, h
    return latent(x)


def _sampler(name: str) -> Callable[[Guide, Latent], Tensor]:
    """Sampling with the registered sampler ``name`` down the latent's grid."""

    def run(guide: Guide, z: Latent) -> Tensor:
        return sampler(name)(guide, z.x, z.sigmas)

    return run


register(
    Method(
        "ddim",
        ddim,
        _sampler("euler"),
        exact="fixed point",
        cost="inversion 1 + refine per step, sampling 1 per step (the euler/ddim sampler)",
    )
)
register(
    Method(
        "dpmpp_2m",
        dpmpp_2m,
        _sampler("dpmpp_2m"),
        exact="no",
        cost="1 per step each way (sampling: the dpmpp_2m sampler)",
    )
)
