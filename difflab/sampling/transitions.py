"""Stochastic samplers as chains of Gaussian transitions (the denoising MDP of DDPO, Black et al. 2023).

A sampler registered with a keyword ``step`` writes each interval i of its grid as

    x_{i+1} = step(i, mean, std)[0],     x_{i+1} ~ N(mean, std^2 I),

mean = m_i(x_i, history, D) a deterministic function of the current state, its multistep history
and the denoiser, std a host float (0: a deterministic interval). The :class:`Step` decides what
x_{i+1} is: :func:`draw` (sampling) adds the noise; a trajectory records the transition as well; a
re-evaluation returns a recorded state and scores it (difflab.sampling.trajectory). Sampling and
log-probabilities thus run the same code and cannot disagree.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from difflab.sampling.noise import Noise

__all__ = ["Step", "deterministic", "draw", "gaussian_log_prob"]


class Step(Protocol):
    """x_{i+1} ~ N(mean, std^2 I) on the grid's interval i -> i + 1; returns (x_{i+1}, the noise
    term x_{i+1} - mean) with the term None where std = 0 or ``fused``. ``fused``: the sampler adds
    its noise as mean.add(z, alpha=std) (one rounding), else as mean + std z (each keeps its own
    arithmetic, so its outputs stay bit-identical)."""

    def __call__(
        self, i: int, mean: Tensor, std: float, fused: bool = False
    ) -> tuple[Tensor, Tensor | None]: ...


def deterministic(i: int, mean: Tensor, std: float, fused: bool = False) -> tuple[Tensor, None]:
    """The :class:`Step` of a noise-free sampler sharing a stochastic one's loop: x_{i+1} = mean."""
    if std != 0:
        raise ValueError(f"a deterministic sampler was asked for noise (std {std}) at step {i}")
    return mean, None


def draw(sigmas: list[float], noise: Noise) -> Step:
    """The sampling :class:`Step`: x_{i+1} = mean + std z, z = noise(sigma_i, sigma_{i+1})."""

    def step(i: int, mean: Tensor, std: float, fused: bool = False) -> tuple[Tensor, Tensor | None]:
        if std == 0:
            return mean, None
        z = noise(sigmas[i], sigmas[i + 1])
        if fused:
            return mean.add(z, alpha=std), None
        term = z.mul_(std)
        return mean + term, term

    return step


def gaussian_log_prob(x: Tensor, mean: Tensor, std: float) -> Tensor:
    """log N(x; mean, std^2 I) per sample [B], summed over the other dims, in float64."""
    d = math.prod(x.shape[1:])
    r = (x.to(torch.float64) - mean.to(torch.float64)).flatten(1)
    var = std * std
    return -0.5 * r.square().sum(1) / var - d * (math.log(abs(std)) + 0.5 * math.log(2 * math.pi))
