"""Classifier networks and their model folders (type "classifier" of :mod:`difflab.utils.folder`):

- :class:`MnistClassifier`: the MNIST feature network of :mod:`difflab.metrics.classifier` (Fréchet
  distance, precision/recall and class accuracy of MNIST samples);
- :class:`NoisyClassifier`: p(c | x, sigma) on x = x0 + sigma eps, for classifier guidance
  (:func:`difflab.guidance.classifier_guidance`).

A classifier folder's config holds ``architecture`` (the class name), the network's own config and a
record (test accuracy, training). The shipped ones load by name:
``difflab.pretrained.load_classifier("mnist_classifier")`` and ``("mnist_noisy_classifier")``;
``python -m difflab.metrics.train_mnist`` and ``python -m difflab.training.noisy_classifier``
retrain them.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from difflab.core.tensors import as_tensor
from difflab.models.embeddings import TimeEmbedding
from difflab.utils.folder import (
    CONFIG,
    WEIGHTS,
    read_folder_config,
    read_folder_weights,
    save_folder,
)
from difflab.utils.names import unknown_name
from difflab.utils.weights import load_state_dict_strict

__all__ = [
    "CLASSIFIERS",
    "NOISY_SIGMA_RANGE",
    "MnistClassifier",
    "NoisyClassifier",
    "load_classifier",
    "save_classifier",
]

NOISY_SIGMA_RANGE = (
    0.002,
    80.0,
)  # the noise levels NoisyClassifier is trained on (MNIST's process)


class MnistClassifier(nn.Module):
    """Conv blocks (3x3 conv, batch norm, ReLU, 2x2 max-pool) then a ``features``-wide ReLU layer
    (the feature space) and a linear classifier; input [B, 1, 28, 28] in [-1, 1]."""

    def __init__(
        self, channels: tuple[int, ...] = (16, 32, 64), features: int = 128, classes: int = 10
    ) -> None:
        super().__init__()
        self.config = {"channels": list(channels), "features": features, "classes": classes}
        blocks: list[nn.Module] = []
        width, size = 1, 28
        for c in channels:
            blocks += [
                nn.Conv2d(width, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            width, size = c, size // 2
        self.conv = nn.Sequential(*blocks)
        self.embed = nn.Sequential(
            nn.Flatten(), nn.Linear(width * size * size, features), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Linear(features, classes))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(features [B, features], logits [B, classes])."""
        f = self.embed(self.conv(x))
        return f, self.head(f)


class _Block(nn.Module):
    """3x3 conv, group norm, FiLM by the noise embedding (h (1 + a) + b), SiLU, 2x2 average pool."""

    def __init__(self, cin: int, cout: int, emb: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.GroupNorm(8, cout)
        self.film = nn.Linear(emb, 2 * cout)
        self.pool = nn.AvgPool2d(2)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        a, b = self.film(emb)[:, :, None, None].chunk(2, 1)
        return self.pool(nn.functional.silu(self.norm(self.conv(h)) * (1 + a) + b))


class NoisyClassifier(nn.Module):
    """logits(x, sigma) [B, classes] for x = x0 + sigma eps, x0 in [-1, 1]: input c_in x,
    c_in = 1/sqrt(sigma^2 + sigma_data^2) (Karras et al. 2022; x itself at sigma = inf, where it holds
    the unit noise), noise level log(sigma)/4 as Fourier features and FiLM in every conv block, then a
    linear classifier of the flattened map. Noise levels outside the training range
    :data:`NOISY_SIGMA_RANGE` are embedded as its nearer end."""

    def __init__(
        self,
        channels: tuple[int, ...] = (16, 32, 64),
        classes: int = 10,
        image_size: int = 28,
        in_channels: int = 1,
        embedding: int = 64,
        sigma_data: float = 0.5,
    ) -> None:
        super().__init__()
        self.config = {
            "channels": list(channels),
            "classes": classes,
            "image_size": image_size,
            "in_channels": in_channels,
            "embedding": embedding,
            "sigma_data": sigma_data,
        }
        self.sigma_data = sigma_data
        self.embed = TimeEmbedding(embedding, "fourier", fourier_scale=1.0)
        widths = [in_channels, *channels]
        self.blocks = nn.ModuleList(_Block(a, b, embedding) for a, b in itertools.pairwise(widths))
        size = image_size
        for _ in channels:
            size //= 2
        self.head = nn.Linear(channels[-1] * size * size, classes)

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        s = as_tensor(sigma).to(device=x.device, dtype=x.dtype).expand(x.shape[0])
        scale = torch.rsqrt(s.square() + self.sigma_data**2)[:, None, None, None]
        h = torch.where(torch.isinf(s)[:, None, None, None], x, scale * x)
        emb = self.embed(s.clamp(*NOISY_SIGMA_RANGE).log() / 4)  # the trained range
        for block in self.blocks:
            h = block(h, emb)
        return self.head(h.flatten(1))


# architecture name -> network class (its config's keys are its constructor's arguments)
CLASSIFIERS: dict[str, type[nn.Module]] = {
    "MnistClassifier": MnistClassifier,
    "NoisyClassifier": NoisyClassifier,
}


def _build(config: Mapping[str, Any]) -> nn.Module:
    cls = CLASSIFIERS[config["architecture"]]
    keys = [k for k in ("classes", "features", "image_size", "in_channels", "embedding",
                        "sigma_data") if k in config]  # fmt: skip
    return cls(channels=tuple(config["channels"]), **{k: config[k] for k in keys})


def save_classifier(
    folder: str | os.PathLike[str], network: nn.Module, info: Mapping[str, Any] | None = None
) -> Path:
    """Write a classifier folder through :func:`difflab.utils.folder.save_folder`: type
    "classifier", ``architecture`` (the network's class), its config and ``info`` (a record)."""
    name = type(network).__name__
    if name not in CLASSIFIERS:
        raise unknown_name("classifier architecture", name, CLASSIFIERS)
    config = {"type": "classifier", "architecture": name, **network.config, **dict(info or {})}
    return save_folder(folder, config, network.state_dict())


def load_classifier(
    folder: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    architecture: str | None = None,
) -> nn.Module:
    """The classifier saved in ``folder``, in eval mode and without gradients, its weights loaded
    strictly; ``architecture`` (e.g. "NoisyClassifier"), when given, is checked."""
    folder = Path(folder)
    config = read_folder_config(folder, "classifier")
    found = config.get("architecture")
    if architecture is not None and found != architecture:
        raise ValueError(
            f"{folder / CONFIG} names architecture {found!r}, expected {architecture!r}"
        )
    if found not in CLASSIFIERS:
        raise unknown_name(f"classifier architecture in {folder / CONFIG}", found, CLASSIFIERS)
    try:
        network = _build(config)
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{folder / CONFIG}: cannot build its network: {e}") from None
    load_state_dict_strict(network, read_folder_weights(folder), str(folder / WEIGHTS))
    return network.to(device).eval().requires_grad_(False)
