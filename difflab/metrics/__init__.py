"""Metrics (layer 4): Fréchet distance, precision/recall, density/coverage, MMD, sliced W2, the MNIST
feature classifier and class accuracy, log-likelihood in bits/dim by the probability-flow ODE, sample
quality against a reference split in one call (:mod:`~difflab.metrics.evaluate`) and samplers compared
at equal NFE (:mod:`~difflab.metrics.nfe`)."""

from difflab.metrics.classifier import (
    MnistClassifier,
    class_accuracy,
    mnist_features,
    train_classifier,
)
from difflab.metrics.classifier import load as load_classifier
from difflab.metrics.evaluate import evaluate_images, evaluate_samples, load_reference, read_samples
from difflab.metrics.frechet import frechet_distance, frechet_from_stats, gaussian_stats
from difflab.metrics.likelihood import (
    SOLVERS,
    Likelihood,
    dequantize,
    image_bits_per_dim,
    log_likelihood,
)
from difflab.metrics.mmd import median_bandwidth, mmd2
from difflab.metrics.nfe import NfeRow, bench_nfe, format_table, plot_nfe
from difflab.metrics.precision_recall import density_coverage, knn_radii, precision_recall
from difflab.testing.metrics import sliced_w2, wasserstein2_1d

__all__ = [
    "SOLVERS",
    "Likelihood",
    "MnistClassifier",
    "NfeRow",
    "bench_nfe",
    "class_accuracy",
    "density_coverage",
    "dequantize",
    "evaluate_images",
    "evaluate_samples",
    "format_table",
    "frechet_distance",
    "frechet_from_stats",
    "gaussian_stats",
    "image_bits_per_dim",
    "knn_radii",
    "load_classifier",
    "load_reference",
    "log_likelihood",
    "median_bandwidth",
    "mmd2",
    "mnist_features",
    "plot_nfe",
    "precision_recall",
    "read_samples",
    "sliced_w2",
    "train_classifier",
    "wasserstein2_1d",
]
