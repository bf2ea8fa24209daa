"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of
Diffusion Models", Alg. 2), in x = x0 + sigma eps coordinates.

A student on a grid of N steps learns to do in one DDIM step what the teacher does in two on the
grid of 2N: from x at s = sigma_2i, the teacher steps to s_m = sigma_2i+1 and then to
s' = sigma_2i+2, landing at x''. One DDIM step of the student, x' = x0 + (s'/s)(x - x0), lands there
when its x0 prediction is

    x0_target = (x'' - (s'/s) x) / (1 - s'/s)                 (eq. 8 of the paper, here s'/s = ratio),

and at s' = 0 it is x'' itself. The student regresses x0_target with the training objective's own
weighting (for EDM, lambda = 1/sigma^2 + 1/sigma_data^2, the paper's "SNR + 1" up to the data scale),
through :func:`difflab.training.denoising_loss` on the pair (x0_target, eps_target = (x - x0_target)/s),
which is x = x0 + s eps again. Then the student becomes the teacher and N halves, down to 1 step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from difflab.acceleration.teacher import ode_step
from difflab.core.tensors import append_dims

__all__ = ["halve", "progressive_target"]


def progressive_target(
    teacher: Callable[..., Tensor],
    x: Tensor,
    sigma: Tensor,
    sigma_mid: Tensor,
    sigma_next: Tensor,
    solver: str = "euler",
    **cond: Any,
) -> Tensor:
    """The x0 a student's single DDIM step from ``sigma`` to ``sigma_next`` [B] must predict to land
    where the teacher's two ``solver`` steps through ``sigma_mid`` land (no gradient)."""
    with torch.no_grad():
        x_mid = ode_step(teacher, x, sigma, sigma_mid, solver, **cond)
        x_next = ode_step(teacher, x_mid, sigma_mid, sigma_next, solver, **cond)
        ratio = append_dims(sigma_next / sigma, x.ndim)
        return (x_next - ratio * x) / (1 - ratio)


def halve(sigmas: Tensor) -> Tensor:
    """The student's grid: every other level of the teacher's (2N steps -> N, same ends)."""
    steps = len(sigmas) - 1
    if steps < 2 or steps % 2:
        raise ValueError(f"progressive distillation halves an even number of steps, got {steps}")
    return sigmas[::2]
