"""The MNIST feature network: a small CNN classifier whose penultimate layer is the feature space for
Fréchet distance, precision/recall and MMD of MNIST samples, and whose logits score the class accuracy
of conditional samples (the MNIST stand-in for the Inception network of FID, Heusel et al. 2017).

The network is :class:`difflab.models.classifiers.MnistClassifier`; its shipped weights live in
``difflab/pretrained/mnist_classifier`` (a classifier model folder, also loaded by
``difflab.pretrained.load_classifier("mnist_classifier")``); ``python -m difflab.metrics.train_mnist``
retrains them with :func:`train_classifier` and records the test-split accuracy in the config.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from difflab import data
from difflab.models.classifiers import MnistClassifier, load_classifier, save_classifier
from difflab.training.classifiers import fit_classifier

__all__ = [
    "WEIGHTS_DIR",
    "MnistClassifier",
    "class_accuracy",
    "load",
    "mnist_features",
    "save",
    "train_classifier",
]

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "pretrained" / "mnist_classifier"
TRAIN_COMMAND = "python -m difflab.metrics.train_mnist"


def save(model: MnistClassifier, folder: str | Path, info: dict) -> Path:
    """Write the classifier folder (model.safetensors, config.json with its architecture and
    ``info``) through :func:`difflab.models.classifiers.save_classifier`."""
    return save_classifier(folder, model, info)


def load(folder: str | Path | None = None) -> MnistClassifier:
    """The classifier in eval mode from ``folder`` (default: the shipped weights), read with
    safetensors (no pickle)."""
    folder = WEIGHTS_DIR if folder is None else Path(folder)
    return load_classifier(folder, architecture="MnistClassifier")


@functools.cache
def _shipped() -> MnistClassifier:
    return load()


def _as_input(images: Tensor) -> Tensor:
    """[B, 1, 28, 28] float in [-1, 1] from uint8 (k / 127.5 - 1) or float [-1, 1] images shaped
    [B, 28, 28], [B, 1, 28, 28] or the 32 x 32 zero-padded layout (centre-cropped)."""
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[2:] not in ((28, 28), (32, 32)):
        raise ValueError(
            f"MNIST images must be [B, 1, 28, 28] (or [B, 28, 28], or 32 x 32 padded), "
            f"got shape {tuple(images.shape)}"
        )
    if images.shape[2] == 32:
        images = images[:, :, 2:30, 2:30]
    if images.dtype == torch.uint8:
        return data.from_uint8(images)
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 or float in [-1, 1], got dtype {images.dtype}")
    return images.float()


@torch.no_grad()
def mnist_features(
    images: Tensor, model: MnistClassifier | None = None, batch_size: int = 1000
) -> tuple[Tensor, Tensor]:
    """(features [B, 128], logits [B, 10]) of MNIST images (uint8, or float in [-1, 1]) under the
    shipped classifier (or ``model``), evaluated in batches on the images' device."""
    model = _shipped() if model is None else model
    x = _as_input(images)
    model = model.to(x.device)
    outputs = [model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    if not outputs:
        raise ValueError("no images given")
    return torch.cat([f for f, _ in outputs]), torch.cat([g for _, g in outputs])


def class_accuracy(images: Tensor, labels: Tensor, model: MnistClassifier | None = None) -> float:
    """Fraction of images the classifier assigns to their intended class: mean 1[argmax logits = y]
    (the classification accuracy of conditional samples)."""
    labels = torch.as_tensor(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"need one label per image ({len(images)}), got {tuple(labels.shape)}")
    _, logits = mnist_features(images, model)
    return float((logits.argmax(1).cpu() == labels.cpu()).double().mean())


def _shift(x: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """Each image translated by its own random offset in [-pad, pad]^2 (zero-padded with -1)."""
    b, _, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad), value=-1.0)
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b, 1), generator=generator)
    rows = (dy + torch.arange(h))[:, :, None]
    cols = (dx + torch.arange(w))[:, None, :]
    return padded[torch.arange(b)[:, None, None], 0, rows, cols][:, None]


def train_classifier(
    channels: tuple[int, ...] = (16, 32, 64),
    epochs: int = 4,
    batch_size: int = 128,
    lr: float = 3e-3,
    shift: int = 2,
    seed: int = 0,
    log: bool = True,
) -> tuple[MnistClassifier, dict]:
    """Train the classifier on the MNIST training split (60k) with random shifts of up to ``shift``
    pixels (:func:`~difflab.training.classifiers.fit_classifier`); return it with its test-split
    (10k) accuracy."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    start, cpu_start = time.perf_counter(), time.process_time()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    train, test = data.load("mnist", "train"), data.load("mnist", "test")
    (train_x, train_y), (test_x, test_y) = (train.x, train.labels), (test.x, test.labels)
    model = MnistClassifier(channels)
    accuracy: list[float] = []

    def report(epoch: int, loss: float) -> None:
        if log or epoch + 1 == epochs:
            accuracy.append(class_accuracy(test_x, test_y, model))
        if log:
            print(
                f"epoch {epoch + 1}/{epochs}: train loss {loss:.4f}, "
                f"test accuracy {accuracy[-1]:.4f}, {time.perf_counter() - start:.0f} s",
                flush=True,
            )

    fit_classifier(
        model, train_x, train_y, lambda net, x, gen: net(_shift(x, shift, gen))[1],
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=5e-4, generator=g,
        on_epoch=report,
    )  # fmt: skip
    info = {
        "test_accuracy": accuracy[-1],
        "train_seconds": round(time.perf_counter() - start, 1),
        "train_cpu_seconds": round(time.process_time() - cpu_start, 1),
        "training": {
            "command": TRAIN_COMMAND,
            "data": "MNIST training split (60000 images); accuracy on the test split (10000)",
            "input": "[B, 1, 28, 28], uint8 k mapped to k / 127.5 - 1",
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "augmentation": f"random shifts of up to {shift} pixels",
            "seed": seed,
            "threads": torch.get_num_threads(),
        },
    }
    return model, info
