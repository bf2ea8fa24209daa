"""The step machinery the restoration methods share: the checks every method makes before any
evaluation (the sampler's input checks, a grid ending in sigma = 0, the start x against the
measurement) and one denoiser evaluation with a vector-Jacobian product through it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from difflab.restoration.measurement import Measurement
from difflab.sampling.registry import Callback, SamplerGrid, validate

__all__ = ["checked_grid", "denoise_at", "value_and_grad"]


def checked_grid(
    denoiser: Callable[..., Tensor],
    measurement: Measurement,
    x: Tensor,
    sigmas: Tensor | Sequence[float],
    cond: dict[str, Any] | None,
    callback: Callback | None,
    groups: int | None = None,
) -> SamplerGrid:
    """The sampler grid over ``sigmas`` after every check of a method's input: x and sigmas as a
    sampler checks them, sigmas finite and ending in 0 (every method returns clean samples), and
    x against the measurement (:meth:`Measurement.check`; ``groups``: particle groups, one
    measurement each)."""
    s = validate(x, sigmas)
    if math.isinf(s[0]) or s[-1] != 0:
        raise ValueError(
            "sigmas must be a finite grid ending in 0 (every method returns clean samples), got "
            f"{s if len(s) <= 8 else f'{len(s)} levels from {s[0]:g} to {s[-1]:g}'}"
        )
    measurement.check(x, groups)
    return SamplerGrid(denoiser, x, s, cond, callback)


def value_and_grad(
    evaluate: Callable[[Tensor], Tensor], x: Tensor, objective: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """(D(x), f(D(x)) [B], grad_x sum_b f_b) with D = ``evaluate``: one denoiser evaluation and one
    vector-Jacobian product through it. Samples are independent, so row b of the gradient is
    grad f_b alone."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        d = evaluate(xg)
        value = objective(d)
        (grad,) = torch.autograd.grad(value.sum(), xg)
    return d.detach(), value.detach(), grad


def denoise_at(grid: SamplerGrid, i: int) -> Callable[[Tensor], Tensor]:
    """x -> D(x, sigma_i) on the grid, without its callback (the caller reports detached values)."""
    return lambda x: grid.evaluate(x, grid.sigma(i))
