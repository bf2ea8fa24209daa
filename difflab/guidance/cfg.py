"""Classifier-free guidance and composable conditions as denoiser transformations: one network,
evaluated with and without its class label in one batch (the null label -1 is the unconditional
model)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from difflab.guidance.guided import Branches, Denoiser, guide, label_branches
from difflab.guidance.rules import Rule

__all__ = ["classifier_free", "composable"]


def classifier_free(
    denoiser: Denoiser,
    scale: float | Rule,
    sigma_interval: tuple[float, float] | None = None,
    null_label: int = -1,
) -> Denoiser:
    """D_w(x, sigma, labels) = D(x, sigma) + w (D(x, sigma, labels) - D(x, sigma)) with the null
    label for D(x, sigma) (Ho & Salimans 2022), or any rule of :mod:`difflab.guidance.rules` (rescale, APG,
    CFG-Zero*) on that pair; guiding only for sigma inside ``sigma_interval`` when given
    (Kynkäänniemi et al. 2024). Both evaluations run as one batch of 2B; without labels the
    denoiser runs unguided."""

    def both(
        x: Tensor, sigma: Tensor | float, labels: Tensor, **cond: Any
    ) -> tuple[Tensor, Tensor]:
        pair = torch.stack([labels, torch.full_like(labels, null_label)], 1)
        d_cond, d_uncond = label_branches(denoiser, x, sigma, pair, **cond)
        return d_cond, d_uncond

    guided = guide(Branches(denoiser, both), scale, sigma_interval)

    def cfg(x: Tensor, sigma: Tensor | float, labels: Tensor | None = None, **cond: Any) -> Tensor:
        if labels is None:
            return denoiser(x, sigma, labels=None, **cond)
        return guided(x, sigma, labels=labels, **cond)

    return cfg


def composable(denoiser: Denoiser, weights: Sequence[float], null_label: int = -1) -> Denoiser:
    """D(x, sigma) + sum_i w_i (D(x, sigma, c_i) - D(x, sigma)) (Liu et al. 2022, "Compositional
    Visual Generation with Composable Diffusion Models", eqs. 10-11): conditions joined by AND take
    w_i > 0, NOT takes w_i < 0. The composed denoiser takes ``labels`` [B, K], column i holding
    condition c_i of each sample; all K + 1 evaluations run as one batch. It is the score of
    p(x) prod_i p(c_i | x)^w_i."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.ndim != 1 or len(w) == 0 or not bool(torch.isfinite(w).all()):
        raise ValueError(f"weights must be one finite number per condition, got {weights!r}")
    k = len(w)

    def composed(x: Tensor, sigma: Tensor | float, labels: Tensor, **cond: Any) -> Tensor:
        labels = torch.as_tensor(labels, device=x.device)
        if labels.shape != (x.shape[0], k):
            raise ValueError(
                f"composable guidance with {k} conditions needs labels [B, {k}] = "
                f"[{x.shape[0]}, {k}], got {tuple(labels.shape)}"
            )
        null = torch.full_like(labels[:, :1], null_label)
        out = label_branches(denoiser, x, sigma, torch.cat([labels, null], 1), **cond)
        uncond = out[k]
        return uncond + torch.tensordot(w.to(x), out[:k] - uncond, 1)

    return composed
