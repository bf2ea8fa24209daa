"""Reflow (Liu et al. 2023, "Flow Straight and Fast: Learning to Generate and Transfer Data with
Rectified Flow"; InstaFlow, Liu et al. 2024), in x = x0 + sigma eps coordinates.

The teacher's ODE couples each noise z with its sample x0 = T(z). A student trained with the
ordinary denoising objective on these *coupled* pairs, x = x0 + sigma z instead of independent
(x0, eps), learns D(x, sigma) = E[x0 | x] under the coupling; where the straight paths
x0 + sigma z of different pairs do not cross, that is T(z) itself at every sigma, so one Euler step
from the start, D(sigma_max z, sigma_max), lands on the teacher's sample. (Liu et al. write it for
x_t = t x1 + (1 - t) x0 with velocity x1 - x0; that is the flow process of difflab, and in sigma
coordinates the same regression for any process.)

A student that only ever samples on one few-step grid is only ever called at that grid's levels;
:class:`GridLevels` spends the whole regression there (noise levels ``"grid"`` of ``difflab
distill``): at sigma_i the target is still x0, so D(x0 + sigma_i z, sigma_i) = T(z) is exactly what
each Euler step of the student needs (it lands on x0 + sigma_(i+1) z, the next level's input).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from difflab import sampling
from difflab.training.noise_levels import NoiseLevels
from difflab.training.objectives import Objective, denoising_loss

__all__ = ["GridLevels", "reflow_loss", "reflow_pairs"]

Levels = Callable[[int, torch.Generator | None, torch.device | str | None], Tensor]


class GridLevels:
    """sigma drawn uniformly from the positive levels of a sampling grid (a few-step student's own
    levels, e.g. :func:`difflab.acceleration.few_step_grid`): ``GridLevels(grid)(n, generator)``."""

    def __init__(self, sigmas: Tensor | Sequence[float]) -> None:
        levels = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
        levels = levels[levels > 0]
        if len(levels) == 0 or not bool(torch.isfinite(levels).all()):
            raise ValueError(
                f"grid noise levels need finite positive levels, got {levels.tolist()} "
                "(a flow model's grid starts at inf: set teacher.sigma_max)"
            )
        self.levels = levels

    def __call__(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """n levels [n] (float64, on the generator's device)."""
        if generator is not None:
            device = generator.device
        i = torch.randint(len(self.levels), (n,), generator=generator, device=device)
        return self.levels.to(i.device)[i]


def reflow_pairs(
    teacher: Callable[..., Tensor],
    z: Tensor,
    sigmas: Tensor | Sequence[float],
    sampler: str = "heun",
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    **options: Any,
) -> Tensor:
    """x0 = T(z): the teacher's ``sampler`` run on ``sigmas`` from x = sigmas[0] z (z itself at
    sigma = inf); ``options`` go to the sampler (``cond=`` included)."""
    start = float(sigmas[0])
    x = z * start if math.isfinite(start) else z
    with torch.no_grad():
        return sampling.get(sampler)(teacher, x, sigmas, generator=generator, **options)


def reflow_loss(
    student: Callable[..., Tensor],
    objective: Objective,
    x0: Tensor,
    z: Tensor,
    noise_levels: NoiseLevels | Levels,
    generator: torch.Generator | None = None,
    **cond: Any,
) -> Tensor:
    """Per-sample lambda(sigma) ||D(x0 + sigma z, sigma) - x0||^2 with the objective's weighting,
    sigma ~ ``noise_levels`` (a :class:`NoiseLevels` or :class:`GridLevels`), on coupled pairs
    (x0, z). The levels must reach the start of the few-step grid: rectified flow's t ~ U[0, 1]
    ("uniform_t") and the grid's own levels do, EDM's log-normal does not."""
    sigma = noise_levels(x0.shape[0], generator, x0.device).to(x0.device)
    return denoising_loss(student, x0, z, sigma, objective.weighting, **cond)
