"""Pseudoinverse-guided diffusion (PiGDM; Song, Vahdat, Mardani & Kautz 2023, "Pseudoinverse-Guided
Diffusion Models for Inverse Problems") as a denoiser transformation: the guided denoiser is a
denoiser, so every registered sampler runs it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from difflab import sampling
from difflab.core.tensors import as_tensor, broadcast_sigma
from difflab.restoration.likelihood import log_likelihood, posterior_variance
from difflab.restoration.measurement import Measurement, takes_measurement
from difflab.restoration.steps import checked_grid, value_and_grad
from difflab.sampling.registry import Callback

__all__ = ["pigdm", "pigdm_denoiser"]


@takes_measurement
def pigdm_denoiser(
    denoiser: Callable[..., Tensor], measurement: Measurement, data_std: float = 1.0
) -> Callable[..., Tensor]:
    """D_y(x, sigma) = D + sigma^2 g, g = J^T A^T (r^2 A A^T + noise_std^2 I)^-1 (y - A D), J = dD/dx:
    Tweedie's formula for p(x0 | x, y) with PiGDM's guidance g = grad_x log p~(y | x) (one
    vector-Jacobian product; r^2 = sigma^2 c^2 / (sigma^2 + c^2), c = ``data_std``, the paper's
    r_t^2 at c = 1). Exact when p(x0 | x) is Gaussian with covariance r^2 I. The weight sigma^2 on g
    is the one Tweedie's formula gives (implementations of the paper weight g in their own ways;
    docs/inverse.md). Needs a LinearOperator (its SVD gives (r^2 A A^T + noise_std^2 I)^-1 exactly).
    The guided denoiser takes x with y's batch."""
    op = measurement.linear_operator("pigdm")
    y, noise_std = measurement.y, measurement.noise_std
    posterior_variance(1.0, data_std)  # validates data_std

    def guided(x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        if len(x) != len(y):
            raise ValueError(
                f"the PiGDM denoiser holds {len(y)} measurements, got {len(x)} samples"
            )
        sig = as_tensor(sigma, x.dtype).to(x.device)
        r2 = posterior_variance(sig, data_std).expand(len(x))
        d, _, g = value_and_grad(
            lambda xg: denoiser(xg, sigma, **cond),
            x,
            lambda d: log_likelihood(op, y, d, noise_std, r2),
        )
        return d + broadcast_sigma(sig, x).square() * g

    return guided


@takes_measurement
def pigdm(
    denoiser: Callable[..., Tensor],
    measurement: Measurement,
    x: Tensor,
    sigmas: Tensor | Sequence[float],
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    callback: Callback | None = None,
    cond: dict[str, Any] | None = None,
    data_std: float = 1.0,
    sampler: str = "ddim_eta",
    **sampler_options: Any,
) -> Tensor:
    """PiGDM: the registered ``sampler`` (DDIM(eta = 1) by default, options passed on) run on
    :func:`pigdm_denoiser`. NFE = the sampler's, each with one backward pass."""
    checked_grid(denoiser, measurement, x, sigmas, cond, callback)  # checks before any work
    guided = pigdm_denoiser(denoiser, measurement, data_std)
    fn = sampling.get(sampler)
    options = {"generator": generator} if sampling.info(sampler).stochastic else {}
    return fn(guided, x, sigmas, callback=callback, cond=cond, **options, **sampler_options)
