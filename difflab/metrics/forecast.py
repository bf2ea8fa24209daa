"""Scores of probabilistic forecasts and imputations given as samples: the exact CRPS of the samples'
empirical distribution, CSDI's quantile CRPS and CRPS-sum, errors of the sample median and interval
coverage (Gneiting & Raftery 2007; Tashiro et al. 2021).

Every function takes samples [S, ...] and the truth [...], with an optional bool ``mask`` [...] of
the entries to score (all by default); the arithmetic is float64 and each score is a mean over the
scored entries (the quantile CRPS, as CSDI's, is normalized by sum |y| instead).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "QUANTILES",
    "coverage",
    "crps",
    "crps_sum",
    "forecast_metrics",
    "gaussian_crps",
    "median_errors",
    "quantile_crps",
]

QUANTILES = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05, 0.10, ..., 0.95 (CSDI)


def _check(samples: Tensor, truth: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """(samples, truth) as float64 and the mask as bool, after checking their shapes."""
    if samples.ndim < 1 or samples.shape[0] < 1 or samples.shape[1:] != truth.shape:
        raise ValueError(
            f"expected samples [S, ...] and truth [...] of the same entries, got "
            f"{list(samples.shape)} and {list(truth.shape)}"
        )
    if mask is None:
        mask = torch.ones(truth.shape, dtype=torch.bool, device=truth.device)
    if mask.shape != truth.shape or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be bool of the truth's shape {list(truth.shape)}, got {mask.dtype} "
            f"{list(mask.shape)}"
        )
    if not bool(mask.any()):
        raise ValueError("mask selects no entries to score")
    samples, truth = samples.double(), truth.double()
    if not (
        bool(torch.isfinite(samples[:, mask]).all()) and bool(torch.isfinite(truth[mask]).all())
    ):
        raise ValueError("samples or truth contain NaN or inf on the scored entries")
    return samples, truth, mask


def _mean(values: Tensor, mask: Tensor) -> float:
    return float(values[mask].mean())


def _quantiles(ordered: Tensor, levels: Sequence[float] | Tensor) -> Tensor:
    """[Q, ...]: the levels' quantiles of sorted samples [S, ...], interpolated linearly between
    order statistics at position q (S - 1), as torch.quantile and NumPy's default do."""
    levels = torch.as_tensor(levels, dtype=torch.float64, device=ordered.device)
    position = levels * (ordered.shape[0] - 1)
    below = position.floor().long()
    above = position.ceil().long()
    frac = (position - below).reshape(-1, *[1] * (ordered.ndim - 1))
    return ordered[below] + frac * (ordered[above] - ordered[below])


def _crps(ordered: Tensor, truth: Tensor, fair: bool) -> Tensor:
    """Per entry E|X - y| - 1/2 E|X - X'| of sorted samples, sum_{i,j} |x_i - x_j| =
    2 sum_i (2i - S - 1) x_(i)."""
    s = ordered.shape[0]
    rank = torch.arange(1, s + 1, dtype=torch.float64, device=ordered.device)
    spread = ((2 * rank - s - 1).reshape(-1, *[1] * truth.ndim) * ordered).sum(
        0
    )  # sum_{i,j}|.| / 2
    return (ordered - truth).abs().mean(0) - spread / (s * (s - 1) if fair else s * s)


def crps(samples: Tensor, truth: Tensor, mask: Tensor | None = None, fair: bool = False) -> float:
    """Mean CRPS of the samples' empirical distribution, E|X - y| - 1/2 E|X - X'| (Gneiting & Raftery
    2007), exact by sorting; ``fair``: the unbiased 1/(2 S (S - 1)) spread term (Ferro 2014)."""
    samples, truth, mask = _check(samples, truth, mask)
    if fair and samples.shape[0] < 2:
        raise ValueError("the fair CRPS needs at least 2 samples")
    return _mean(_crps(samples.sort(0).values, truth, fair), mask)


def gaussian_crps(mean: Tensor, std: Tensor, truth: Tensor) -> Tensor:
    """CRPS(N(mean, std^2), y) = std (z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)), z = (y - mean) / std,
    per entry (Gneiting & Raftery 2007)."""
    mean, std, truth = (torch.as_tensor(t, dtype=torch.float64) for t in (mean, std, truth))
    if not bool((std > 0).all()):
        raise ValueError("gaussian_crps needs std > 0")
    z = (truth - mean) / std
    pdf = torch.exp(-z.square() / 2) / math.sqrt(2 * math.pi)
    return std * (z * (2 * torch.special.ndtr(z) - 1) + 2 * pdf - 1 / math.sqrt(math.pi))


def _quantile_loss(
    ordered: Tensor, truth: Tensor, weight: Tensor, levels: Sequence[float]
) -> float:
    """mean_q 2 sum w |(y - q_hat)(1{y <= q_hat} - q)| / sum w |y| (CSDI's calc_quantile_CRPS)."""
    denominator = (weight * truth).abs().sum()
    if float(denominator) == 0:
        raise ValueError("the quantile CRPS divides by sum |y| over the scored entries, which is 0")
    q_hat = _quantiles(ordered, levels)
    q = torch.as_tensor(levels, dtype=torch.float64, device=truth.device)
    q = q.reshape(-1, *[1] * truth.ndim)
    loss = 2 * (weight * (truth - q_hat) * ((truth <= q_hat).double() - q)).abs()
    loss = loss.reshape(len(q), -1).sum(1)
    return float((loss / denominator).mean())


def quantile_crps(
    samples: Tensor,
    truth: Tensor,
    mask: Tensor | None = None,
    quantiles: Sequence[float] = QUANTILES,
) -> float:
    """CSDI's normalized CRPS: mean over q of 2 sum |(y - q_hat)(1{y <= q_hat} - q)| / sum |y|, q_hat
    the samples' q-quantile, q = 0.05, ..., 0.95 (Tashiro et al. 2021)."""
    samples, truth, mask = _check(samples, truth, mask)
    return _quantile_loss(samples.sort(0).values, truth, mask.double(), quantiles)


def _summed(samples: Tensor, truth: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Samples and truth summed over the last axis on the scored entries, and CSDI's weight of each
    sum, the fraction of its entries scored."""
    return (samples * mask).sum(-1), (truth * mask).sum(-1), mask.double().mean(-1)


def crps_sum(samples: Tensor, truth: Tensor, mask: Tensor | None = None) -> float:
    """CRPS-sum: the quantile CRPS of the sum over the last axis (columns) of the scored entries,
    each sum weighted by its fraction of scored entries (CSDI's calc_quantile_CRPS_sum; Rasul et al.
    2021, Tashiro et al. 2021)."""
    samples, truth, mask = _check(samples, truth, mask)
    total, target, weight = _summed(samples, truth, mask)
    return _quantile_loss(total.sort(0).values, target, weight, QUANTILES)


def median_errors(
    samples: Tensor, truth: Tensor, mask: Tensor | None = None
) -> tuple[float, float]:
    """(MSE, MAE) of the per-entry sample median (the 0.5 quantile, interpolated; Tashiro et al.
    2021 score CSDI's deterministic error this way)."""
    samples, truth, mask = _check(samples, truth, mask)
    error = _quantiles(samples.sort(0).values, [0.5])[0] - truth
    return _mean(error.square(), mask), _mean(error.abs(), mask)


def coverage(
    samples: Tensor, truth: Tensor, level: float = 0.9, mask: Tensor | None = None
) -> float:
    """Fraction of truths inside the samples' central interval [q_(1-level)/2, q_(1+level)/2]
    (Gneiting & Raftery 2007)."""
    if not 0 < level < 1:
        raise ValueError(f"coverage level must lie in (0, 1), got {level}")
    samples, truth, mask = _check(samples, truth, mask)
    return _coverage(samples.sort(0).values, truth, level, mask)


def _coverage(ordered: Tensor, truth: Tensor, level: float, mask: Tensor) -> float:
    low, high = _quantiles(ordered, [(1 - level) / 2, (1 + level) / 2])
    return _mean(((low <= truth) & (truth <= high)).double(), mask)


def forecast_metrics(
    samples: Tensor, truth: Tensor, mask: Tensor | None = None
) -> dict[str, float]:
    """crps, crps_quantile, crps_sum, mse, mae (of the median), coverage_50 and coverage_90 in one
    pass (the samples sorted once)."""
    samples, truth, mask = _check(samples, truth, mask)
    ordered = samples.sort(0).values
    error = _quantiles(ordered, [0.5])[0] - truth
    total, target, weight = _summed(samples, truth, mask)
    return {
        "crps": _mean(_crps(ordered, truth, fair=False), mask),
        "crps_quantile": _quantile_loss(ordered, truth, mask.double(), QUANTILES),
        "crps_sum": _quantile_loss(total.sort(0).values, target, weight, QUANTILES),
        "mse": _mean(error.square(), mask),
        "mae": _mean(error.abs(), mask),
        "coverage_50": _coverage(ordered, truth, 0.5, mask),
        "coverage_90": _coverage(ordered, truth, 0.9, mask),
    }
