"""The step machinery the inverse-problem samplers share: a validated grid ending in sigma = 0 and
one denoiser evaluation with a vector-Jacobian product through it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from difflab.core.tensors import as_tensor, check_finite
from difflab.sampling.registry import Callback, Grid

__all__ = ["denoise_at", "make_grid", "value_and_grad"]


def make_grid(
    denoiser: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor | Sequence[float],
    cond: dict[str, Any] | None,
    callback: Callback | None,
) -> Grid:
    """The sampling Grid over ``sigmas``, which must be finite, strictly decreasing and end in 0
    (every method returns clean samples)."""
    check_finite(x, "x")
    s = as_tensor(sigmas).detach().to("cpu", torch.float64)
    if (
        s.ndim != 1
        or len(s) < 2
        or not bool(torch.isfinite(s).all())
        or bool((s[1:] >= s[:-1]).any())
        or float(s[-1]) != 0
    ):
        raise ValueError(
            "sigmas must be a finite, strictly decreasing 1-D grid of at least 2 levels ending "
            f"in 0, got {s.tolist() if s.numel() <= 8 else tuple(s.shape)}"
        )
    return Grid(denoiser, x, s.tolist(), cond, callback)


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


def denoise_at(grid: Grid, i: int) -> Callable[[Tensor], Tensor]:
    """x -> D(x, sigma_i) on the grid, without its callback (the caller reports detached values)."""
    return lambda x: grid.evaluate(x, grid.sigma(i))
