"""Metrics (layer 4): Fréchet distance, precision/recall, density/coverage, MMD, sliced W2, the MNIST
feature classifier and class accuracy, and log-likelihood in bits/dim by the probability-flow ODE."""

from difflab.metrics.classifier import (
    MnistClassifier,
    class_accuracy,
    mnist_features,
    train_classifier,
)
from difflab.metrics.classifier import load as load_classifier
from difflab.metrics.evaluate import evaluate_images
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
    "MnistClassifier",
    "class_accuracy",
    "density_coverage",
    "dequantize",
    "evaluate_images",
    "frechet_distance",
    "frechet_from_stats",
    "gaussian_stats",
    "image_bits_per_dim",
    "knn_radii",
    "load_classifier",
    "log_likelihood",
    "median_bandwidth",
    "mmd2",
    "mnist_features",
    "precision_recall",
    "sliced_w2",
    "train_classifier",
    "wasserstein2_1d",
]
