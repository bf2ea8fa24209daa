"""Metrics (layer 4): Fréchet distance, precision/recall, density/coverage, MMD and sliced W2."""

from difflab.metrics.frechet import frechet_distance, frechet_from_stats, gaussian_stats
from difflab.metrics.mmd import median_bandwidth, mmd2
from difflab.metrics.precision_recall import density_coverage, knn_radii, precision_recall
from difflab.testing.metrics import sliced_w2, wasserstein2_1d

__all__ = [
    "density_coverage",
    "frechet_distance",
    "frechet_from_stats",
    "gaussian_stats",
    "knn_radii",
    "median_bandwidth",
    "mmd2",
    "precision_recall",
    "sliced_w2",
    "wasserstein2_1d",
]
