"""Distances between sample sets, to judge a stochastic sampler in distribution against exact
samples (DESIGN.md, "Truth comes from exact models")."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sliced_w2", "wasserstein2_1d"]


def wasserstein2_1d(a: Tensor, b: Tensor) -> Tensor:
    """Exact W2 between the empirical distributions of the columns of a [N, P] and b [M, P] (one
    distance per column): sqrt(int_0^1 (F_a^-1(q) - F_b^-1(q))^2 dq), the step quantile
    functions integrated exactly on the union of their breakpoints k/N and k/M."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need a [N, P] and b [M, P], got {tuple(a.shape)} and {tuple(b.shape)}")
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        raise ValueError("need at least one sample on each side")
    sa = a.double().T.contiguous().sort(-1).values  # [P, N]: sorting rows is the fast layout
    sb = b.double().T.contiguous().sort(-1).values
    if n == m:
        return (sa - sb).square().mean(-1).sqrt()
    upper = torch.cat(
        [torch.arange(1, n + 1) * m, torch.arange(1, m + 1) * n]
    ).unique()  # q * n * m
    width = torch.diff(upper, prepend=upper.new_zeros(1))
    mid = upper * 2 - width  # 2 q_mid n m, integer arithmetic: the floors below are exact
    ia, ib = (mid // (2 * m)).to(sa.device), (mid // (2 * n)).to(sb.device)
    w = (width.double() / (n * m)).to(sa.device)
    return ((sa[:, ia] - sb[:, ib]).square() * w).sum(-1).sqrt()


def sliced_w2(
    a: Tensor, b: Tensor, projections: int = 256, generator: torch.Generator | None = None
) -> float:
    """Sliced 2-Wasserstein distance between sample sets a [N, ...] and b [M, ...]:
    sqrt(mean over random unit directions u of W2(a u, b u)^2), each 1-D W2 exact
    (:func:`wasserstein2_1d`). Seed ``generator`` for a reproducible value. Two independent sets of
    N exact samples sit at a floor of order N^-1/2 (times the data scale), not at 0."""
    a, b = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b have different dimensions: {a.shape[1]} and {b.shape[1]}")
    if projections < 1:
        raise ValueError(f"projections must be >= 1, got {projections}")
    u = torch.randn(a.shape[1], projections, generator=generator, dtype=torch.float64)
    u = (u / u.norm(dim=0)).to(a.device)
    return float(wasserstein2_1d(a @ u, b @ u).square().mean().sqrt())
