"""Sample quality in one call. ``evaluate_images`` scores MNIST images in the feature space of the
shipped MNIST classifier (:mod:`difflab.metrics.classifier`); ``evaluate_samples`` scores images the
same way and 2-D (or any) vectors by their Fréchet distance, sliced W2 and MMD, each against a
reference split such as "mnist-test" or "moons-test" (:func:`load_reference`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from difflab import data
from difflab.data.arrays import read_arrays
from difflab.metrics.classifier import MnistClassifier, mnist_features
from difflab.metrics.frechet import frechet_distance
from difflab.metrics.mmd import mmd2
from difflab.metrics.precision_recall import density_coverage, precision_recall
from difflab.testing.metrics import sliced_w2
from difflab.utils.names import unknown_name

__all__ = [
    "check_same_kind",
    "evaluate_images",
    "evaluate_samples",
    "load_reference",
    "read_samples",
]

SPLITS = ("train", "test")


def load_reference(reference: str | os.PathLike[str] | Tensor | np.ndarray, n: int) -> Tensor:
    """Up to ``n`` reference samples: the first n of a data set's split named "name-split"
    ("mnist-test", "moons-test"; a bare name means its test split; a toy's split is drawn with n
    samples), of a .npy / .npz file or image folder, or of a given tensor or array."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"need at least 2 reference samples, got n = {n!r}")
    if isinstance(reference, Tensor | np.ndarray):
        return torch.as_tensor(reference)[:n]
    key = str(reference)
    name, _, split = key.rpartition("-")
    if split not in SPLITS or not name:
        name, split = key, "test"
    if isinstance(reference, str) and name in data.available():
        options = {"n": n} if name in data.toys.TOYS else {}
        return data.load(name, split, **options).x[:n]
    if not Path(key).exists():
        raise ValueError(
            f"{unknown_name('reference data set', name, data.available())}; a reference is a "
            "split written name-split (e.g. 'mnist-test') or an existing path"
        )
    return data.load(key).x[:n]


def read_samples(path: str | os.PathLike[str]) -> tuple[Tensor, Tensor | None]:
    """(samples, labels or None) from a .npz written by ``difflab sample`` (arrays "images" uint8 or
    "samples", and "labels"; labels count only when none is -1, the null class) or a .npy file."""
    samples, labels = read_arrays(path)
    if samples.dtype != np.uint8 and samples.dtype.kind not in "f":
        raise ValueError(f"{path}: samples must be uint8 images or floats, got {samples.dtype}")
    x = torch.from_numpy(samples)
    if labels is None or labels.dtype.kind not in "iu" or (labels < 0).any():
        return x, None
    return x, torch.from_numpy(labels.astype(np.int64))


def _is_vectors(x: Tensor) -> bool:
    return x.ndim == 2


def check_same_kind(samples: Tensor, reference: Tensor, what: str) -> None:
    """A ValueError unless ``samples`` and ``reference`` are both images or both vectors of one
    dimension; ``what`` names the samples in it."""
    if _is_vectors(samples) != _is_vectors(reference) or (
        _is_vectors(samples) and samples.shape[1] != reference.shape[1]
    ):
        raise ValueError(
            f"{what} are of shape {list(samples.shape[1:])} but the reference samples are of "
            f"shape {list(reference.shape[1:])}: pass a matching reference (e.g. 'mnist-test' for "
            "MNIST images, 'moons-test' for 2-D points)"
        )


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


def evaluate_samples(
    samples: Tensor | np.ndarray,
    labels: Tensor | np.ndarray | None = None,
    reference: str | os.PathLike[str] | Tensor | np.ndarray = "mnist-test",
    n: int = 10_000,
    *,
    inception: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """Sample quality against ``n`` reference samples (:func:`load_reference`).

    MNIST images (uint8, or float in [-1, 1]): :func:`difflab.metrics.evaluate_images`, i.e. the
    Fréchet distance (Heusel et al. 2017), precision/recall, density/coverage and MMD^2 in the
    shipped classifier's features, class accuracy with ``labels``, and with ``inception`` the
    Inception FID (optional extra). Vectors [N, D]: the Fréchet distance of the raw vectors, sliced
    W2 (Bonneel et al. 2015; projections seeded by ``seed``) and RBF MMD^2 (Gretton et al. 2012).
    """
    x = torch.as_tensor(samples)
    if len(x) < 2:
        raise ValueError(f"need at least 2 samples, got shape {tuple(x.shape)}")
    ref = load_reference(reference, n)
    check_same_kind(x, ref, "the samples")
    if not _is_vectors(x):
        y = None if labels is None else torch.as_tensor(labels)
        result = evaluate_images(x, ref, y)
        if inception:
            from difflab.metrics.inception import inception_fid

            result["inception_fid"] = inception_fid(x, ref)
        return result
    if labels is not None or inception:
        raise ValueError("class accuracy and Inception FID need images; these samples are vectors")
    x, ref = x.double(), ref.double()
    return {
        "frechet_distance": frechet_distance(x, ref),
        "sliced_w2": sliced_w2(x, ref, generator=torch.Generator().manual_seed(seed)),
        "mmd2": mmd2(x, ref),
    }
