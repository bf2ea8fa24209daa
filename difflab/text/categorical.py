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

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from difflab.sampling.noise import rand

__all__ = ["GUMBEL_MAX", "categorical", "float32_tail_probability", "gumbel", "gumbel_from_uniform"]

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


def float32_tail_probability(n: int, gap: float) -> float:
    """The exact probability that float32 Gumbel-max sampling (:func:`categorical` with
    ``dtype=torch.float32``) draws any of n tail categories whose logits are ``gap`` (>= 12) below
    the one head category; the target is n e^-gap / (1 + n e^-gap).

    Every float32 uniform torch can give is k 2^-24. The tail wins iff its largest noise exceeds
    the head's + gap; only a tail category's top 4096 levels can (checked), and only heads whose
    noise is below GUMBEL_MAX - gap can lose (enumerated, u = 0 giving -inf), so
    P = 2^-24 sum_head [1 - (1 - c(head + gap) 2^-24)^n], c(x) = number of top levels above x."""
    if gap < 12:
        raise ValueError(f"the enumeration covers gaps >= 12, got {gap}")
    levels = torch.arange(2**24, dtype=torch.float64)
    top = gumbel_from_uniform((1 - levels[1:4097].flip(0) * 2.0**-24).float()).double()
    last = math.exp(-math.exp(-(float(top[-1]) - gap)))  # heads above this uniform always win
    head = gumbel_from_uniform((levels[: math.ceil(last * 2**24) + 1] * 2.0**-24).float())
    threshold = head.double() + gap
    if not float(threshold[1]) > float(top[0]):
        raise AssertionError("a tail level below the top 4096 could win")
    above = (len(top) - torch.searchsorted(top, threshold, right=True)).double() / 2**24
    above[0] = 1.0  # u = 0: the head's noise is -inf and any tail category wins
    return float((1 - (1 - above) ** n).sum()) / 2**24
