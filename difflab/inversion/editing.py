"""Editing built on inversion: SDEdit, re-generation under a new condition, and interpolation
between inverted samples."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from difflab import sampling
from difflab.inversion.base import Cond, Guide, Latent, invert, sample

__all__ = ["Edit", "edit", "interpolate", "sdedit", "slerp"]

Denoiser = Callable[..., Tensor]


@torch.no_grad()
def sdedit(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor | Sequence[float],
    *,
    cond: Cond | None = None,
    guidance: float = 1.0,
    null: Cond | None = None,
    sampler: str = "dpmpp_2m",
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    **sampler_options: Any,
) -> Tensor:
    """SDEdit: x_s = x + s eps at s = sigmas[0], then ``sampler`` down ``sigmas`` under ``cond``
    (Meng et al. 2022). The noise level trades faithfulness (low s) for realism (high s); a grid
    ending in 0 returns clean samples."""
    s = torch.as_tensor(sigmas, dtype=torch.float64)
    if s.ndim != 1 or len(s) < 2 or not 0 < float(s[0]) < float("inf"):
        raise ValueError("sigmas must be a decreasing grid starting at a finite level > 0")
    guide = Guide(denoiser, cond or {}, guidance, null)
    noisy = x + float(s[0]) * sampling.noise_source(x, generator)()
    return sampling.get(sampler)(guide, noisy, s, **sampler_options)


@dataclass(frozen=True)
class Edit:
    """An inversion-based edit: the input's latent, its reconstruction and the edited sample."""

    latent: Latent
    reconstruction: Tensor
    edited: Tensor


@torch.no_grad()
def edit(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor | Sequence[float],
    *,
    source: Cond,
    target: Cond,
    method: str = "edict",
    guidance: float = 1.0,
    null: Cond | None = None,
    **options: Any,
) -> Edit:
    """Re-generation under a new condition: invert x under ``source``, sample the latent under
    ``target`` (keeping what the latent encodes, e.g. a digit's style, while the class changes),
    and under ``source`` for the reconstruction."""
    z = invert(
        denoiser, x, sigmas, method=method, cond=source, guidance=guidance, null=null, **options
    )
    return Edit(z, sample(denoiser, z), sample(denoiser, z, cond=target))


def slerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """Spherical interpolation per sample, sin((1-t) theta) / sin(theta) a + sin(t theta) /
    sin(theta) b, theta the angle between a and b (Shoemake 1985): for Gaussian noise it keeps the
    norm near sqrt(d) sigma where linear interpolation shrinks it by up to sqrt(2)."""
    if a.shape != b.shape:
        raise ValueError(f"slerp needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    af, bf = a.flatten(1).double(), b.flatten(1).double()
    cos = (af * bf).sum(1) / (af.norm(dim=1) * bf.norm(dim=1)).clamp_min(1e-300)
    theta = torch.arccos(cos.clamp(-1, 1))
    sin = torch.sin(theta)
    near = sin < 1e-6  # (anti)parallel: the arc is degenerate, fall back to the line
    wa = torch.where(near, 1 - t, torch.sin((1 - t) * theta) / sin.where(~near, 1.0))
    wb = torch.where(near, torch.full_like(theta, t), torch.sin(t * theta) / sin.where(~near, 1.0))
    shape = (-1,) + (1,) * (a.ndim - 1)
    return (wa.view(shape) * a.double() + wb.view(shape) * b.double()).to(a.dtype)


def _blend(a: Any, b: Any, t: float, noise: bool) -> Any:
    if isinstance(a, Tensor) and a.is_floating_point():
        return slerp(a, b, t) if noise else torch.lerp(a, b, t)
    if isinstance(a, dict):
        return {k: _blend(v, b[k], t, noise) for k, v in a.items()}
    if isinstance(a, tuple):
        return tuple(_blend(u, v, t, noise) for u, v in zip(a, b))
    return a


def _mix(a: Latent, b: Latent, t: float) -> Latent:
    """The latent between a and b: noise states slerped, per-step nulls and offsets lerped."""
    if a.method != b.method or not torch.equal(a.sigmas, b.sigmas) or a.options != b.options:
        raise ValueError("interpolation needs two latents of the same method, grid and options")
    if a.x.shape != b.x.shape:
        raise ValueError(f"latent shapes differ: {tuple(a.x.shape)} and {tuple(b.x.shape)}")
    changes = {
        name: _blend(getattr(a, name), getattr(b, name), t, name in ("x", "partner"))
        for name in ("x", "partner", "nulls", "offsets")
    }
    return replace(a, **changes)


@torch.no_grad()
def interpolate(
    denoiser: Denoiser,
    a: Latent,
    b: Latent,
    ts: Sequence[float],
    *,
    cond: Cond | None = None,
) -> Tensor:
    """Samples [len(ts), B, ...] between two inverted batches: for each t the latents' noise
    slerped (per-step nulls / offsets interpolated linearly), sampled down their grid under
    ``cond`` (default: a's). t = 0 and 1 reproduce the two inputs (exactly, for the exact methods)
    when both were inverted under that condition."""
    return torch.stack([sample(denoiser, _mix(a, b, float(t)), cond=cond) for t in ts])
