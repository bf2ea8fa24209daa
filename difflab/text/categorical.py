"""Categorical sampling by the Gumbel-max trick, in float64 by default.

argmax_i (log p_i / T + G_i), G_i = -log(-log U_i), U_i ~ U[0, 1), is a draw from softmax(log p / T)
(Gumbel 1954; Maddison et al. 2014). In float32, torch's U has 24 random bits, so U <= 1 - 2^-24 and
G <= -log(-log(1 - 2^-24)) = 16.64: the Gumbel noise is truncated, and a category whose probability
is below about 2^-24 times the winner's is never drawn, nor drawn often enough just above it. A
masked diffusion step whose "stay masked" probability is near 1 puts every token there, so float32
sampling lowers the effective temperature (Zheng et al. 2024, Sec. 5). float64 (53 bits) moves the
truncation to G <= 36.7, out of reach.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from difflab.sampling.noise import rand

__all__ = ["GUMBEL_MAX", "categorical", "gumbel", "gumbel_from_uniform"]

Generator = torch.Generator | Sequence[torch.Generator] | None

# the largest Gumbel noise a dtype's torch.rand can give: -log(-log(1 - 2^-mantissa bits))
GUMBEL_MAX = {torch.float32: 16.6355, torch.float64: 36.7368}


def gumbel_from_uniform(u: Tensor) -> Tensor:
    """G = -log(-log U), computed in U's dtype: the map every Gumbel draw goes through."""
    return -torch.log(-torch.log(u))


def gumbel(
    shape: Sequence[int],
    generator: Generator = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Standard Gumbel noise -log(-log U), U ~ U[0, 1) in ``dtype``; row i from generator i when
    given a list."""
    return gumbel_from_uniform(rand(shape, generator, dtype, device))


def categorical(
    logits: Tensor,
    generator: Generator = None,
    temperature: float = 1.0,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """One draw from softmax(logits / temperature) over the last dimension, computed in ``dtype``
    (float64 unless you mean to show the float32 bias); -inf logits are never drawn.
    ``temperature`` 0 is the argmax."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(-1)
    scores = logits.to(dtype) / temperature
    return (scores + gumbel(scores.shape, generator, dtype, scores.device)).argmax(-1)
