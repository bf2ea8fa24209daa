"""Image restoration by name: the tasks and methods behind ``difflab restore`` and
``benchmarks/inverse.py``, with seeded measurements and one restoration per measured image."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from difflab.core.tensors import unknown_name
from difflab.restoration.ddrm import ddrm
from difflab.restoration.dps import dps
from difflab.restoration.measurement import Measurement, takes_measurement
from difflab.restoration.operators import (
    Inpainting,
    LinearOperator,
    downsample,
    gaussian_blur,
    mask,
)
from difflab.restoration.pigdm import pigdm
from difflab.restoration.smc import smc
from difflab.sampling import generators, randn

__all__ = ["METHODS", "TASKS", "measure", "psnr", "restore", "shown", "task_operator"]

TASKS = ("inpaint", "superres", "deblur")
METHODS: dict[str, Callable[..., Any]] = {"dps": dps, "pigdm": pigdm, "ddrm": ddrm, "smc": smc}


def task_operator(
    task: str,
    shape: Sequence[int],
    *,
    mask_kind: str = "center",
    factor: int = 4,
    blur_std: float = 1.0,
    seed: int = 0,
) -> LinearOperator:
    """The operator of a named task on images [C, H, W]: "inpaint" (mask ``mask_kind``: center,
    half or random, seeded), "superres" (``factor`` x average pooling), "deblur" (Gaussian blur of
    std ``blur_std`` pixels)."""
    if task == "inpaint":
        return Inpainting(mask(mask_kind, shape, seed=seed))
    if task == "superres":
        return downsample(shape, factor)
    if task == "deblur":
        return gaussian_blur(shape, blur_std)
    raise unknown_name("task", task, TASKS)


def measure(operator: LinearOperator, x: Tensor, noise_std: float, seed: int = 0) -> Tensor:
    """y = A x + noise_std n, n ~ N(0, I) from generator (seed, i) for image i."""
    y = operator(x)
    return y + noise_std * randn(y.shape, generators(seed, len(y)), y.dtype, y.device)


def shown(operator: LinearOperator, y: Tensor) -> Tensor:
    """The measurement as an image: y itself when A keeps the image shape (blur), else A^+ y
    (inpainting: zeros where unobserved; pooling: each block filled with its mean)."""
    return y if operator.out_shape == operator.in_shape else operator.pinv(y)


def psnr(x: Tensor, truth: Tensor, peak: float = 2.0) -> Tensor:
    """10 log10(peak^2 / MSE) per image (peak 2 for images in [-1, 1]), after clipping x to [-1, 1]."""
    mse = (x.clamp(-1, 1) - truth).flatten(1).square().mean(1)
    return 10 * torch.log10(peak**2 / mse)


@takes_measurement
def restore(
    denoiser: Callable[..., Tensor],
    measurement: Measurement,
    sigmas: Tensor,
    method: str = "ddrm",
    *,
    seed: int = 0,
    cond: dict[str, Any] | None = None,
    particles: int = 8,
    **options: Any,
) -> Tensor:
    """One restoration x [B, *in_shape] per measurement y [B, ...] (of a LinearOperator) by
    ``method`` (dps, pigdm, ddrm, smc), starting from sigma_0 eps_i with eps_i and later noise from
    generator (seed, i) of :func:`difflab.sampling.generators`, so image i does not depend on the
    batch. SMC runs ``particles`` particles per image (generators (seed, i K + j)) and returns one
    particle per image, drawn uniformly from its equally weighted final set. ``options`` go to the
    method."""
    if method not in METHODS:
        raise unknown_name("method", method, METHODS)
    operator, y = measurement.linear_operator("restore", "A's input shape"), measurement.y
    b = len(y)
    k = particles if method == "smc" else 1
    gens = generators(seed, b * k, y.device)
    x = randn((b * k, *operator.in_shape), gens, y.dtype, y.device) * float(sigmas[0])
    if method != "smc":
        return METHODS[method](
            denoiser, measurement, x, sigmas, generator=gens, cond=cond, **options
        )
    cond = {
        key: v.repeat_interleave(k, 0) if isinstance(v, Tensor) and v.ndim and len(v) == b else v
        for key, v in (cond or {}).items()
    }
    out = smc(denoiser, measurement, x, sigmas, particles=k, generator=gens, cond=cond, **options)
    pick = torch.stack([torch.randint(k, (), generator=gens[i * k]) for i in range(b)])
    return out.x[pick.to(y.device) + torch.arange(b, device=y.device) * k]
