"""Sample previews written during training: an image grid, or a scatter plot for 2-D data."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from difflab import sampling, schedules
from difflab.core.processes import Process
from difflab.data import Dataset, to_uint8
from difflab.guidance import classifier_free
from difflab.utils.images import image_grid, panels, save_png, scatter

__all__ = ["preview", "preview_samples"]


@torch.no_grad()
def preview_samples(
    denoiser: nn.Module,
    shape: tuple[int, ...],
    n: int,
    options: dict[str, Any],
    process: Process,
    num_classes: int = 0,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """n samples from ``options`` (sampler, schedule, steps, guidance), labels cycling over the
    classes when the data is labelled."""
    labels = torch.arange(n, device=device) % num_classes if num_classes else None
    den = denoiser
    if labels is not None and options["guidance"] != 1:
        den = classifier_free(denoiser, options["guidance"])
    sigmas = schedules.get(options["schedule"])(
        options["steps"], process.sigma_min, process.sigma_max, process=process
    ).to(device)
    g = torch.Generator(device).manual_seed(seed)
    x = torch.randn((n, *shape), generator=g, device=device)
    if math.isfinite(sigmas[0]):  # a flow starts at sigma = inf from the noise itself
        x = x * sigmas[0]
    cond = {} if labels is None else {"labels": labels}
    return sampling.get(options["sampler"])(lambda x, s: den(x, s, **cond), x, sigmas), labels


def preview(
    denoiser: nn.Module,
    data: Dataset,
    options: dict[str, Any],
    process: Process,
    path: Path,
    device: torch.device | str = "cpu",
) -> None:
    """Write a PNG of samples: a grid with one row per class for images, a scatter for 2-D data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x, _ = preview_samples(
        denoiser, data.shape, options["n"], options, process, data.num_classes, device
    )
    if x.ndim == 4:
        nrow = data.num_classes if data.num_classes else None
        save_png(image_grid(to_uint8(x.float().cpu()).numpy(), nrow), path)
        return
    points = x.float().cpu().numpy()[:, :2]
    real = data.x[: len(points)].numpy()[:, :2]
    lim = float(np.abs(real).max()) * 1.2
    extent = (-lim, lim, -lim, lim)
    save_png(panels([("data", scatter(real, extent)), ("samples", scatter(points, extent))]), path)
