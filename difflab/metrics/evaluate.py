"""Sample-quality metrics of MNIST images in one call: everything difflab measures in the feature
space of the shipped MNIST classifier (:mod:`difflab.metrics.classifier`)."""

from __future__ import annotations

from torch import Tensor

from difflab.metrics.classifier import MnistClassifier, mnist_features
from difflab.metrics.frechet import frechet_distance
from difflab.metrics.mmd import mmd2
from difflab.metrics.precision_recall import density_coverage, precision_recall

__all__ = ["evaluate_images"]


def evaluate_images(
    samples: Tensor,
    reference: Tensor,
    labels: Tensor | None = None,
    *,
    model: MnistClassifier | None = None,
) -> dict[str, float]:
    """Fréchet distance (Heusel et al. 2017), precision/recall (k=3, Kynkäänniemi et al. 2019),
    density/coverage (k=5, Naeem et al. 2020) and RBF MMD^2 (median bandwidth, Gretton et al. 2012)
    between the classifier features of ``samples`` and ``reference`` (MNIST images, uint8 or float in
    [-1, 1]); with ``labels`` (the classes the samples were drawn for) also their class accuracy."""
    feats, logits = mnist_features(samples, model)
    ref, _ = mnist_features(reference, model)
    result: dict[str, float] = {
        "frechet_distance": frechet_distance(feats, ref),
        **precision_recall(ref, feats, k=3),
        **density_coverage(ref, feats, k=5),
        "mmd2": mmd2(feats, ref),
    }
    if labels is not None:
        labels = labels.to(logits.device)
        if labels.shape != (len(samples),):
            raise ValueError(
                f"need one label per sample ({len(samples)}), got shape {tuple(labels.shape)}"
            )
        result["class_accuracy"] = float((logits.argmax(1) == labels).double().mean())
    return result
