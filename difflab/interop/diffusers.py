"""difflab on diffusers models, and difflab samplers inside diffusers pipelines (the ``interop``
extra)::

    D = difflab.interop.diffusers.denoiser(pipe.unet, pipe.scheduler)         # any difflab tool
    pipe.scheduler = difflab.interop.diffusers.Scheduler.from_config(
        pipe.scheduler.config, sampler="dpmpp_2m", schedule="karras")         # any pipeline

- :func:`denoiser`: D(x, sigma, **cond) = E[x0 | x = x0 + sigma eps] (DESIGN.md) from a diffusers
  model and its scheduler or scheduler config (DDPM tables, eps / v / x0 prediction, flow matching).
- :class:`Scheduler`: any difflab sampler on any difflab grid behind diffusers' scheduler API.
- :func:`load`: the denoiser of a local diffusers model or pipeline folder, read offline.
- :func:`save_unet`: a difflab UNet as a diffusers UNet2DModel folder, where the architecture maps.
"""

from __future__ import annotations

try:
    import diffusers  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
        "difflab.interop.diffusers needs diffusers: pip install 'difflab[interop]'"
    ) from e

from difflab.interop.diffusers_denoiser import (
    DiffusersNet,
    denoiser,
    load,
    model_prediction,
    prediction_of,
    process_of,
)
from difflab.interop.diffusers_scheduler import Scheduler, SchedulerOutput
from difflab.interop.diffusers_unet import save_unet, scheduler_config, unet2d_config

__all__ = [
    "DiffusersNet",
    "Scheduler",
    "SchedulerOutput",
    "denoiser",
    "load",
    "model_prediction",
    "prediction_of",
    "process_of",
    "save_unet",
    "scheduler_config",
    "unet2d_config",
]
