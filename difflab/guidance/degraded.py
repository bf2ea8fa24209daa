"""Guidance by a degraded version of the model itself: the negative branch is the same condition
evaluated by a weaker network (autoguidance) or by the network with its attention maps replaced by the
identity (perturbed-attention guidance, :func:`difflab.models.perturbed_attention`, which switches
difflab's networks inside :func:`perturbed`). Any rule of :mod:`difflab.guidance.rules` combines them.
Both take any denoiser callable."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from torch import Tensor

from difflab.guidance.guided import Branches, Denoiser, guide
from difflab.guidance.rules import Rule

__all__ = ["autoguidance", "perturbed"]


def autoguidance(
    good: Denoiser,
    weak: Denoiser,
    scale: float | Rule,
    sigma_interval: tuple[float, float] | None = None,
) -> Denoiser:
    """D_w = D_weak + w (D_good - D_weak), both with the same conditioning (Karras et al. 2024,
    "Guiding a Diffusion Model with a Bad Version of Itself"): the score of p_good^w p_weak^(1-w).
    The weak model should share the good one's task and conditioning but be smaller and/or trained
    shorter. With weak = good it is the identity."""

    def both(x: Tensor, sigma: Tensor | float, **cond: Any) -> tuple[Tensor, Tensor]:
        return good(x, sigma, **cond), weak(x, sigma, **cond)

    return guide(Branches(good, both), scale, sigma_interval)


def perturbed(
    denoiser: Denoiser,
    perturbation: Any,
    scale: float | Rule,
    sigma_interval: tuple[float, float] | None = None,
) -> Denoiser:
    """D_w = D_hat + w (D - D_hat), D_hat the denoiser evaluated inside the context manager
    ``perturbation()`` (a callable returning one), e.g. attention maps switched to the identity."""

    def both(x: Tensor, sigma: Tensor | float, **cond: Any) -> tuple[Tensor, Tensor]:
        d = denoiser(x, sigma, **cond)
        context: AbstractContextManager[Any] = perturbation()
        with context:
            return d, denoiser(x, sigma, **cond)

    return guide(Branches(denoiser, both), scale, sigma_interval)
