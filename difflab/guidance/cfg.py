"""Classifier-free guidance and composable conditions as denoiser transformations: one network,
evaluated with and without its condition in one batch (the null label -1, or the null context, is
the unconditional model: :mod:`difflab.core.conditioning`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from difflab.core.conditioning import NULL_LABEL, null_like
from difflab.guidance.guided import Branches, Denoiser, condition_branches, guide, label_branches
from difflab.guidance.rules import Rule

__all__ = ["classifier_free", "composable"]


def classifier_free(
    denoiser: Denoiser,
    scale: float | Rule,
    sigma_interval: tuple[float, float] | None = None,
    null_label: int = NULL_LABEL,
    condition: str | Sequence[str] = "labels",
) -> Denoiser:
    """D_w(x, sigma, c) = D(x, sigma) + w (D(x, sigma, c) - D(x, sigma)) with the null condition for
    D(x, sigma) (Ho & Salimans 2022), or any rule of :mod:`difflab.guidance.rules` (rescale, APG,
    CFG-Zero*) on that pair; guiding only for sigma inside ``sigma_interval`` when given
    (Kynkäänniemi et al. 2024). Both evaluations run as one batch of 2B.

    ``condition`` names the guided condition key(s): "labels" (null: ``null_label``), "context"
    (null: a NaN row, which difflab networks replace by their learned null context), any key of a
    float condition, or several keys dropped together. Keys the call leaves out or sets to None are
    already null; without any of them the denoiser runs unguided."""
    keys = (condition,) if isinstance(condition, str) else tuple(condition)
    if not keys:
        raise ValueError("classifier_free needs at least one condition key to guide")

    def both(x: Tensor, sigma: Tensor | float, **cond: Any) -> tuple[Tensor, Tensor]:
        branches = {}
        for key in keys:
            if cond.get(key) is not None:
                value = cond.pop(key)
                branches[key] = torch.stack([value, null_like(value, null_label)])
        d_cond, d_uncond = condition_branches(denoiser, x, sigma, branches, **cond)
        return d_cond, d_uncond

    guided = guide(Branches(denoiser, both), scale, sigma_interval)

    def cfg(x: Tensor, sigma: Tensor | float, labels: Tensor | None = None, **cond: Any) -> Tensor:
        if labels is not None or "labels" in keys:
            cond["labels"] = labels
        if all(cond.get(key) is None for key in keys):
            return denoiser(x, sigma, **cond)
        return guided(x, sigma, **cond)

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
