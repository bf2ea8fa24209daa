"""Maximum mean discrepancy with a Gaussian (RBF) kernel, unbiased estimator (Gretton et al. 2012)."""

from __future__ import annotations

import torch
from torch import Tensor

from difflab.metrics.precision_recall import BLOCK, distance_blocks

__all__ = ["median_bandwidth", "mmd2"]


def _check(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    x, y = x.reshape(len(x), -1).double(), y.reshape(len(y), -1).double()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y have different dimensions: {x.shape[1]} and {y.shape[1]}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"need at least 2 samples on each side, got {len(x)} and {len(y)}")
    return x, y


def median_bandwidth(x: Tensor, y: Tensor, max_points: int = 1000) -> float:
    """The median heuristic h = median_{i<j} ||z_i - z_j|| over the pooled sample z = x u y (Gretton
    et al. 2012), using at most ``max_points`` evenly spaced points of each set."""
    x, y = _check(x, y)
    pooled = torch.cat([s[:: -(-len(s) // max_points)] for s in (x, y)])
    h = float(torch.pdist(pooled).median())
    if h <= 0:
        raise ValueError("the median pairwise distance is 0 (repeated points): give a bandwidth")
    return h


def _kernel_sum(a: Tensor, b: Tensor, bandwidth: float, same: bool) -> Tensor:
    """sum_{i, j} exp(-||a_i - b_j||^2 / (2 h^2)), leaving out i = j when a is b."""
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for part, d in distance_blocks(a, b, BLOCK):
        k = torch.exp(-d.square() / (2 * bandwidth**2))
        if same:
            rows = torch.arange(k.shape[0], device=k.device)
            k[rows, rows + part.start] = 0
        total += k.sum()
    return total


def mmd2(x: Tensor, y: Tensor, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2_u = sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (n(n-1))
    - 2 sum_{i,j} k(x_i, y_j) / (mn), k(a, b) = exp(-||a - b||^2 / (2 h^2)), h given or by the
    median heuristic (Gretton et al. 2012). Zero in expectation when x and y share a distribution,
    so it can come out slightly negative."""
    x, y = _check(x, y)
    h = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    if not h > 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    m, n = len(x), len(y)
    kxx = _kernel_sum(x, x, h, same=True) / (m * (m - 1))
    kyy = _kernel_sum(y, y, h, same=True) / (n * (n - 1))
    kxy = _kernel_sum(x, y, h, same=False) / (m * n)
    return float(kxx + kyy - 2 * kxy)
