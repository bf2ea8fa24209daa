"""Update formulas shared by the samplers (all in x = x0 + sigma eps coordinates)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["FINAL_STEPS", "ddim_step", "final_step"]

FINAL_STEPS = ("tau", "denoised")


def ddim_step(x: Tensor, denoised: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """DDIM = Euler in sigma = first-order exponential integrator: x' = D + (s'/s)(x - D) (Song et al. 2021)."""
    return denoised + (sigma_next / sigma) * (x - denoised)


def final_step(x: Tensor, denoised: Tensor, final: str = "tau") -> Tensor:
    """The last interval sigma -> 0.

    "tau": Euler in tau = sigma^2, where the flow x(tau) is smooth: x(0) = x - tau dx/dtau = (x + D) / 2,
    exact to O(sigma^4) (dx/dtau = (x - D) / (2 tau); D = x(0) - tau x'(0) + O(tau^2) along the flow).
    "denoised": x(0) = D, the first-order jump of diffusers and k-diffusion, exact only to O(sigma^2).
    """
    if final == "tau":
        return (x + denoised) / 2
    if final == "denoised":
        return denoised
    raise ValueError(f"unknown final step {final!r}; valid: {', '.join(FINAL_STEPS)}")
