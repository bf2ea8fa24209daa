"""Classifier-free guidance as a denoiser transformation: a guided denoiser is still a denoiser."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from difflab.core.tensors import as_tensor, broadcast_sigma

__all__ = ["classifier_free"]

Denoiser = Callable[..., Tensor]


def classifier_free(
    denoiser: Denoiser,
    scale: float,
    sigma_interval: tuple[float, float] | None = None,
) -> Denoiser:
    """D_w(x, sigma, labels) = D(x, sigma) + w (D(x, sigma, labels) - D(x, sigma)) with the null
    label -1 for D(x, sigma) (Ho & Salimans 2022), guiding only for sigma inside ``sigma_interval``
    when given (Kynkäänniemi et al. 2024). Both evaluations run as one batch of 2B."""
    if scale < 0:
        raise ValueError(f"guidance scale must be >= 0 (1 = no guidance), got {scale}")

    def guided(
        x: Tensor, sigma: Tensor | float, labels: Tensor | None = None, **cond: Any
    ) -> Tensor:
        if labels is None or scale == 1:
            return denoiser(x, sigma, labels=labels, **cond)
        sigma = as_tensor(sigma).to(x.device)
        both = denoiser(
            torch.cat([x, x]),
            torch.cat([sigma, sigma]) if sigma.ndim else sigma,
            labels=torch.cat([labels, torch.full_like(labels, -1)]),
            **{k: torch.cat([v, v]) for k, v in cond.items()},
        )
        d_cond, d_uncond = both.chunk(2)
        w = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
        if sigma_interval is not None:
            lo, hi = sigma_interval
            inside = (broadcast_sigma(sigma, x) >= lo) & (broadcast_sigma(sigma, x) <= hi)
            w = torch.where(inside, w, torch.ones_like(w))
        return d_uncond + w * (d_cond - d_uncond)

    return guided
