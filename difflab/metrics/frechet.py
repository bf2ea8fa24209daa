"""Fréchet distance between Gaussians fitted to two feature sets (the FID of Heusel et al. 2017 when the
features are Inception's; here any features, e.g. :func:`difflab.metrics.classifier.mnist_features`)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["frechet_distance", "frechet_from_stats", "gaussian_stats"]


def gaussian_stats(feats: Tensor) -> tuple[Tensor, Tensor]:
    """(mean [D], covariance [D, D]) of features [N, D] in float64; the covariance is the unbiased
    1/(N-1) sum (f - mu)(f - mu)^T, as in the reference FID code."""
    if feats.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {tuple(feats.shape)}")
    if len(feats) < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {len(feats)}")
    f = feats.double()
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (len(f) - 1)


def _psd_sqrt(s: Tensor) -> Tensor:
    """The symmetric square root U diag(sqrt(max(lam, 0))) U^T of a symmetric PSD matrix."""
    lam, u = torch.linalg.eigh((s + s.T) / 2)
    return (u * lam.clamp(min=0).sqrt()) @ u.T


def frechet_from_stats(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2) (Fréchet 1957; Dowson & Landau
    1982), in float64 through two symmetric eigendecompositions: no complex sqrtm, no scipy."""
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(t).double() for t in (mu1, mu2, sigma1, sigma2))
    d = mu1.shape[0] if mu1.ndim == 1 else 0
    if d == 0 or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            "need means [D] and covariances [D, D] of one D, got "
            f"{tuple(mu1.shape)}, {tuple(sigma1.shape)}, {tuple(mu2.shape)}, {tuple(sigma2.shape)}"
        )
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    mean_term = (mu1 - mu2).square().sum()
    return float(mean_term + torch.trace(sigma1) + torch.trace(sigma2) - 2 * cross)


def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """Fréchet distance between N(mu_a, S_a) and N(mu_b, S_b) fitted to features [N, D] and [M, D]
    (Heusel et al. 2017)."""
    if feats_a.ndim != 2 or feats_b.ndim != 2 or feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(
            f"need features [N, D] and [M, D], got {tuple(feats_a.shape)} and {tuple(feats_b.shape)}"
        )
    return frechet_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))
