"""KL divergence between two denoisers' samplers along a recorded trajectory, step by step: the
regularizer of DPOK and DRaFT toward the base model (Fan et al. 2023; Clark et al. 2023).

A stochastic sampler's step i is N(m_i, s_i^2 I) with the same s_i under every denoiser (the grid
fixes it), so

    KL(p_theta(. | x_i) || p_base(. | x_i)) = ||m_i^theta - m_i^base||^2 / (2 s_i^2),

and the chain rule of the KL sums these over the steps into the KL of the whole chains (Fan et al.
2023). :func:`transition_means` takes the means of :func:`difflab.sampling.replay`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from difflab.sampling import Trajectory, replay
from difflab.sampling.registry import DenoiserFn

__all__ = ["path_kl", "step_kl", "transition_means"]


def transition_means(
    name: str,
    denoiser: DenoiserFn,
    trajectory: Trajectory,
    *,
    cond: dict[str, Any] | None = None,
    **options: Any,
) -> Tensor:
    """[N, B, ...] m_i(x_0..x_i; D): each recorded step's Gaussian mean recomputed under ``denoiser``
    (the means of :func:`difflab.sampling.replay`; Black et al. 2023's MDP)."""
    return replay(name, denoiser, trajectory, cond=cond, **options).means


def step_kl(means: Tensor, base_means: Tensor, stds: Tensor) -> Tensor:
    """[N, B] KL(N(m_i, s_i^2 I) || N(m_i^base, s_i^2 I)) = ||m_i - m_i^base||^2 / (2 s_i^2), 0 on
    deterministic steps (s_i = 0), in float64 (Fan et al. 2023)."""
    stds = stds.to(means.device, torch.float64)
    diff = (means.to(torch.float64) - base_means.to(torch.float64)).flatten(2).square().sum(2)
    var = torch.where(stds > 0, stds.square(), 1.0)
    return torch.where(stds[:, None] > 0, diff / (2 * var[:, None]), 0.0)


def path_kl(means: Tensor, base_means: Tensor, stds: Tensor) -> Tensor:
    """[B] KL(p_theta(x_0:N) || p_base(x_0:N)) given the states = sum_i of :func:`step_kl` (the
    chain rule of the KL; Fan et al. 2023)."""
    return step_kl(means, base_means, stds).sum(0)
