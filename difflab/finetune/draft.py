"""DRaFT and AlignProp: the reward's gradient backpropagated through the sampler (Clark et al. 2023;
Prabhudesai et al. 2023).

The sampler runs with fixed noise; the denoiser calls of its first N - K steps run without
gradients and the last K with them, so d r(x_N) / d theta flows through the last K steps only
(DRaFT-K; K = 1 is DRaFT-1, K = N full backpropagation; AlignProp draws K uniformly in 1..N each
update). Each differentiated call is recomputed in the backward pass instead of stored
(``torch.utils.checkpoint``), so memory grows with K by the sampler's states only. The optional KL
to the base model, sum_i ||m_i^theta - m_i^base||^2 / (2 s_i^2), is differentiated along the same
path (reparameterized), the final deterministic denoising step included as DDPM's decoder
(:func:`decoder_stds`): with K = N the optimum of E[r] - beta KL is about p exp(r / beta) / Z
(:func:`difflab.testing.tilted`). Without the KL a linear reward grows without bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = ["decoder_stds", "draft_loss", "truncated", "truncation"]

Denoiser = Callable[..., Tensor]


def truncation(k: int, steps: int, random: bool, generator: torch.Generator) -> int:
    """The number K of differentiated steps: ``k`` (DRaFT-K, Clark et al. 2023), or K ~ U{1..N}
    when ``random`` (AlignProp's randomized truncation, Prabhudesai et al. 2023)."""
    if random:
        return int(torch.randint(1, steps + 1, (), generator=generator))
    return min(k, steps)


def decoder_stds(stds: Tensor, sigmas: Tensor) -> Tensor:
    """[N] the steps' stds s_i, a deterministic step's (the final denoising) taken as sigma_i: its
    output is the mean of DDPM's decoder N(m, sigma_i^2 I), displayed noiselessly (Ho et al. 2020,
    sec. 3.3), so the KL regularizes the step the reward's gradient reaches first."""
    return torch.where(stds > 0, stds, sigmas[:-1].to(stds))


def truncated(denoiser: Denoiser, sigma_from: float, use_checkpoint: bool = True) -> Denoiser:
    """D(x, sigma) without gradients where sigma > ``sigma_from`` (the steps before the last K) and
    with them, through gradient checkpointing when ``use_checkpoint``, where sigma <= sigma_from
    (Clark et al. 2023, DRaFT-K)."""

    # the grid's levels may reach the denoiser rounded to float32
    bound = sigma_from * (1 + 1e-6)

    def call(x: Tensor, sigma: Any, **cond: Any) -> Tensor:
        level = float(torch.as_tensor(sigma).max())
        if level > bound or not torch.is_grad_enabled():
            with torch.no_grad():
                return denoiser(x, sigma, **cond)
        if not use_checkpoint:
            return denoiser(x, sigma, **cond)
        return checkpoint(lambda x_, s_: denoiser(x_, s_, **cond), x, sigma, use_reentrant=False)

    return call


def draft_loss(reward: Tensor, kl: Tensor | None = None, beta: float = 0.0) -> Tensor:
    """[B] -r(x_N) + beta KL: the reward ascended through the sampler, with the chains' KL to the
    base as regularizer when beta > 0 (Clark et al. 2023)."""
    loss = -reward
    if beta and kl is not None:
        loss = loss + beta * kl.to(loss.dtype)
    return loss
