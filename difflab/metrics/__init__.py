"""Metrics (layer 4): Fréchet distance, precision/recall, density/coverage, MMD, sliced W2, and
log-likelihood in bits/dim by the probability-flow ODE."""

from difflab.metrics.frechet import frechet_distance, frechet_from_stats, gaussian_stats
from difflab.metrics.likelihood import (
    SOLVERS,
    Likelihood,
    dequantize,
    image_bits_per_dim,
    log_likelihood,
)
from difflab.metrics.mmd import median_bandwidth, mmd2
from difflab.metrics.precision_recall import density_coverage, knn_radii, precision_recall
from difflab.testing.metrics import sliced_w2, wasserstein2_1d

__all__ = [
    "SOLVERS",
    "Likelihood",
    "density_coverage",
    "dequantize",
    "frechet_distance",
    "frechet_from_stats",
    "gaussian_stats",
    "image_bits_per_dim",
    "knn_radii",
    "log_likelihood",
    "median_bandwidth",
    "mmd2",
    "precision_recall",
    "sliced_w2",
    "wasserstein2_1d",
]
