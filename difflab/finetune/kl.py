"""KL divergence between two denoisers' samplers along a recorded trajectory, step by step: the
regularizer of DPOK and DRaFT toward the base model (Fan et al. 2023; Clark et al. 2023).

A stochastic sampler's step i is N(m_i, s_i^2 I) with the same s_i under every denoiser (the grid
fixes it), so

    KL(p_theta(. | x_i) || p_base(. | x_i)) = ||m_i^theta - m_i^base||^2 / (2 s_i^2),

and the chain rule of the KL sums these over the steps into the KL of the whole chains (Fan et al.
2023). :func:`transition_means` replays a recorded trajectory under a denoiser, as
:func:`difflab.sampling.log_probs` does, and returns the means instead of their log-densities.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from difflab.sampling import Trajectory, info, transition_samplers
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
    from the recorded states (the recorded next state where the step is deterministic); the
    sampler's NFE, differentiable in the denoiser and in the states (Black et al. 2023's MDP)."""
    if name not in transition_samplers():
        raise ValueError(
            f"sampler {name!r} has no Gaussian transitions; supported: "
            f"{', '.join(transition_samplers())}"
        )
    s, xs = trajectory.sigmas.tolist(), trajectory.xs
    start = 1 if math.isinf(s[0]) else 0  # the step from sigma = inf is deterministic
    means = list(xs[1:].unbind(0))

    def step(i: int, mean: Tensor, std: float, fused: bool = False) -> tuple[Tensor, Tensor | None]:
        x_next = xs[start + i + 1]
        means[start + i] = mean
        return x_next, (x_next - mean if std != 0 and not fused else None)

    if len(s) - start > 1:
        info(name).run(
            denoiser, xs[start], s[start:], dict(options), cond=cond, steps=lambda *_: step
        )
    return torch.stack(means)


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
