"""Update formulas shared by the samplers (all in x = x0 + sigma eps coordinates)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import Tensor

__all__ = [
    "FINAL_STEPS",
    "SIGMA_DATA",
    "combine",
    "ddim_step",
    "final_step",
    "final_weight",
    "heun_step",
    "phis",
    "previous_eps",
]

FINAL_STEPS = ("tau", "denoised")
SIGMA_DATA = 0.5  # the data scale the final step assumes (EDM's image convention)


def check_final(final: str, sampler: str | None = None) -> None:
    """A ValueError naming the valid final-step policies (samplers check before any evaluation)."""
    if final not in FINAL_STEPS:
        who = f"{sampler}: " if sampler else ""
        raise ValueError(f"{who}unknown final step {final!r}; valid: {', '.join(FINAL_STEPS)}")


def ddim_step(
    x: Tensor, denoised: Tensor, sigma: float | Tensor, sigma_next: float | Tensor
) -> Tensor:
    """DDIM = Euler in sigma = first-order exponential integrator: x' = D + (s'/s)(x - D) (Song et al. 2021)."""
    return denoised + (sigma_next / sigma) * (x - denoised)


def heun_step(
    x: Tensor,
    denoised: Tensor,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    denoise_next: Callable[[Tensor], Tensor],
) -> Tensor:
    """Heun's step from sigma to sigma_next > 0: x' = x + (s' - s)(d + d')/2 with d = (x - D)/s,
    D = ``denoised`` = D(x, s), and d' = (x_E - D(x_E, s'))/s' at the Euler point x_E = x + (s' - s) d
    (``denoise_next`` evaluates D there; Karras et al. 2022, Alg. 1). The levels are host floats, or
    tensors broadcasting against x (a level per sample)."""
    d = (x - denoised) / sigma
    x_pred = x + (sigma_next - sigma) * d
    d_next = (x_pred - denoise_next(x_pred)) / sigma_next
    return x + (sigma_next - sigma) / 2 * (d + d_next)


def combine(
    x: Tensor, scale: float, coefficients: Sequence[float], tensors: Sequence[Tensor]
) -> Tensor:
    """scale x + sum_k coefficients[k] tensors[k], in one new tensor (host-float coefficients:
    one fused multiply-add per term, no temporaries)."""
    terms = list(zip(coefficients, tensors))
    if scale == 1.0 and terms:
        (c0, t0), *terms = terms
        out = x.add(t0, alpha=c0)
    else:
        out = x * scale
    for ck, tk in terms:
        out.add_(tk, alpha=ck)
    return out


def final_weight(sigma: float, sigma_data: float = SIGMA_DATA) -> float:
    """w(r) = (1 + r - sqrt(1 + r)) / r, r = sigma^2 / sigma_data^2: the weight on D that maps x and D
    exactly to x(0) for Gaussian data of variance sigma_data^2; 1/2 + r/8 as r -> 0, 1 as r -> inf."""
    r = (sigma / sigma_data) ** 2
    if r < 1e-6:
        return 0.5 + r / 8
    return (1 + r - math.sqrt(1 + r)) / r


def previous_eps(last: tuple[Tensor, Tensor, float] | None) -> tuple[Tensor, float] | None:
    """(eps, sigma) = ((x - D) / sigma, sigma) from a step's (x, D, sigma), for ``final_step``."""
    if last is None:
        return None
    x, denoised, sigma = last
    return (x - denoised) / sigma, sigma


def final_step(
    x: Tensor,
    denoised: Tensor,
    final: str = "tau",
    sigma: float | None = None,
    previous: tuple[Tensor, float] | None = None,
) -> Tensor:
    """The last interval sigma -> 0, from x and D(x, sigma).

    "tau": along the flow x(tau) is smooth in tau = sigma^2 and D = x(0) - tau x'(0) + O(tau^2), so
    Euler in tau, x(0) = (x + D) / 2, is exact to O(sigma^4) where the jump x(0) = D is only O(sigma^2).
    Since that expansion needs sigma small against the data scale, the weight on D is w(sigma) of
    :func:`final_weight` (1/2 for small sigma, -> 1 for large): x(0) = (1 - w) x + w D. With
    ``previous`` = (eps, sigma) of the step before on the same trajectory, the step is Adams-Bashforth
    2 in tau, f = dx/dtau = eps / (2 sigma): x(0) = x - tau f + tau^2/2 (f - f_p)/(tau - tau_p), its
    correction faded out with w as sigma grows.
    "denoised": x(0) = D, the first-order jump of diffusers and k-diffusion.
    """
    check_final(final)
    if final == "denoised":
        return denoised
    w = 0.5 if sigma is None else final_weight(sigma)
    out = (1 - w) * x + w * denoised
    if previous is not None and sigma is not None:
        eps_p, sigma_p = previous
        tau, tau_p = sigma * sigma, sigma_p * sigma_p
        f = (x - denoised) / (2 * tau)
        slope = (f - eps_p / (2 * sigma_p)) / (tau - tau_p)
        out = out + (2 - 2 * w) * (tau * tau / 2) * slope
    return out


def phis(n: int, z: float) -> list[float]:
    """[phi_1(z), ..., phi_n(z)], phi_k(z) = sum_j z^j / (j + k)! (phi_1(z) = (e^z - 1) / z). For
    |z| < 1 the power series of phi_n, then phi_k = 1/k! + z phi_{k+1} downwards; else phi_1 and
    phi_{k+1} = (phi_k - 1/k!) / z upwards: each direction damps rounding errors where it is used.
    """
    if abs(z) < 1.0:
        term = total = 1.0 / math.factorial(n)
        j = 0
        while abs(term) > 1e-17 * abs(total):
            j += 1
            term *= z / (j + n)
            total += term
        out = [total]
        for k in range(n - 1, 0, -1):
            out.append(1.0 / math.factorial(k) + z * out[-1])
        return out[::-1]
    out = [math.expm1(z) / z]
    for k in range(1, n):
        out.append((out[-1] - 1.0 / math.factorial(k)) / z)
    return out
