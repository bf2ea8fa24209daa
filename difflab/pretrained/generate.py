"""Batch-invariant sampling from a denoiser: one noise generator per sample, class labels, step grids.

Sample i starts from x_i = sigma_0 eps_i with eps_i from its own generator, seeded by (seed, i)
(:func:`difflab.sampling.generators`), and a stochastic sampler draws sample i's later noise from the
same generator, so a sample does not depend on how many others are drawn or how they are batched
(DESIGN.md, Principles).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from difflab import sampling, schedules
from difflab.core.counting import CountingDenoiser
from difflab.core.processes import Process

__all__ = ["Samples", "class_labels", "sample_batched", "step_grid"]


@dataclass(frozen=True)
class Samples:
    """Samples x [N, ...] in data scale with their labels ([N], -1 = null class; None when
    unconditional), the grid, the denoiser evaluations per sample (``nfe``; with guidance each is
    one network batch of 2, counted in ``network_evals``), the seconds spent, and the settings."""

    x: Tensor
    labels: Tensor | None
    sigmas: Tensor
    nfe: int
    network_evals: int
    seconds: float
    options: dict[str, Any] = field(default_factory=dict)


def class_labels(
    labels: int | Sequence[int] | Tensor | None, n: int, num_classes: int
) -> Tensor | None:
    """Labels [n] for a model of ``num_classes`` classes: None cycles through the classes (i mod C),
    one label applies to all, n labels are taken as given; -1 is the null class."""
    if num_classes == 0:
        if labels is None:
            return None
        raise ValueError("this model is unconditional: it takes no labels")
    if labels is None:
        return torch.arange(n) % num_classes
    t = torch.as_tensor(labels)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool or t.ndim > 1:
        raise ValueError(
            f"labels must be an integer or a 1-D sequence of integers, got {t.dtype} of shape "
            f"{tuple(t.shape)}"
        )
    if t.ndim == 0:
        t = t.expand(n)
    elif len(t) != n:
        raise ValueError(f"got {len(t)} labels for {n} samples")
    t = t.to(torch.long).clone()
    bad = t[(t < -1) | (t >= num_classes)]
    if len(bad):
        raise ValueError(
            f"label {int(bad[0])} is outside the model's classes 0-{num_classes - 1} "
            "(or -1, the null class)"
        )
    return t


def step_grid(
    schedule: str | Tensor | Sequence[float],
    steps: int | None,
    process: Process,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> Tensor:
    """sigma_0 > ... > sigma_steps = 0: the grid ``schedule`` (a name, see ``difflab schedules``)
    between the process's noise levels (or the given ones), or an explicit grid of sigmas."""
    if not isinstance(schedule, str):
        try:
            sigmas = torch.as_tensor(schedule, dtype=torch.float64).flatten()
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                f"schedule must be a grid name or a list of sigmas, got {schedule!r}"
            ) from None
        n = len(sigmas) - 1 if len(sigmas) and sigmas[-1] == 0 else len(sigmas)
        sigmas = schedules.get("explicit")(n, sigmas=sigmas)  # checked, 0 appended when missing
        if steps is not None and len(sigmas) != steps + 1:
            raise ValueError(f"the given grid has {len(sigmas) - 1} steps, not {steps}")
        return sigmas
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    grid = schedules.get(schedule)
    return grid(steps, sigma_min, sigma_max, process=process)


def sample_batched(
    denoiser: Callable[..., Tensor],
    shape: Sequence[int],
    sigmas: Tensor,
    sampler: str | Callable[..., Tensor],
    labels: Tensor | None = None,
    *,
    seed: int = 0,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    options: dict[str, Any] | None = None,
) -> tuple[Tensor, int, float]:
    """(x [N, ...], denoiser evaluations per sample, seconds): the sampler run on ``sigmas`` from
    x_i = sigma_0 eps_i (eps_i alone when sigma_0 = inf), in batches of ``batch_size``; ``options``
    go to the sampler (a registered name, or a sampler function such as
    :class:`difflab.guidance.W2SD`)."""
    fn = sampler if callable(sampler) else sampling.get(sampler)
    adaptive = not callable(sampler) and sampling.info(sampler).adaptive
    n = shape[0]
    batch_size = batch_size or n
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    gens = sampling.generators(seed, n, device)
    start = float(sigmas[0])
    bar = None
    if progress:
        from tqdm import tqdm

        batches = -(-n // batch_size)
        total = None if adaptive else batches * (len(sigmas) - 1)
        bar = tqdm(total=total, desc=f"{sampler}, {n} samples", unit="step")
    out, nfe = [], 0
    begin = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, n, batch_size):
            rows = slice(lo, min(lo + batch_size, n))
            g = gens[rows]
            x = sampling.randn((len(g), *shape[1:]), g, torch.float32, device)
            if math.isfinite(start):
                x = x * start
            counted = CountingDenoiser(denoiser)
            cond = None if labels is None else {"labels": labels[rows].to(device)}
            callback = None if bar is None else (lambda *_: bar.update())
            out.append(
                fn(counted, x, sigmas, generator=g, cond=cond, callback=callback, **(options or {}))
            )
            nfe = max(nfe, counted.calls)
    if bar is not None:
        bar.close()
    return torch.cat(out), nfe, time.perf_counter() - begin
