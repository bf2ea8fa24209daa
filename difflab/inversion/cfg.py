"""Inversion for classifier-free guided sampling, where DDIM inversion at guidance w > 1 drifts far:
both methods invert at w = 1 (the pivot path, which DDIM inverts well) and then make the guided
sampler at scale w follow that path, by per-step optimization of the unconditional input (null-text
inversion) or by storing the per-step gap (Direct Inversion).

The unconditional input is the ``null`` condition of :class:`~difflab.inversion.base.Guide`. For
difflab's class-conditional networks the analogue of the paper's null-text embedding is the null
class's embedding vector: :func:`difflab.models.class_embedding.embedding_denoiser` takes it as
``class_embedding`` and :func:`~difflab.models.class_embedding.null_embedding` gives its trained
value.
"""

from __future__ import annotations

import torch
from torch import Tensor

from difflab.inversion.base import Guide, Latent, Method, latent, register
from difflab.inversion.flow import ddim_path
from difflab.sampling.steps import ddim_step

__all__ = ["direct", "null_text"]


def _pivot(guide: Guide, x: Tensor, sigmas: list[float], refine: int) -> list[Tensor]:
    """The DDIM-inverted path at guidance 1, index-aligned with sigmas (path[-1] = x)."""
    return [*reversed(list(ddim_path(guide.with_(guidance=1.0), x, sigmas, refine))), x]


def null_text(
    guide: Guide,
    x: Tensor,
    sigmas: list[float],
    *,
    iterations: int = 10,
    lr: float = 0.1,
    refine: int = 0,
) -> Latent:
    """Null-text inversion: per step, null_i = argmin |x*_{i+1} - DDIM_w(x_i, null)|^2 by Adam from
    null_{i-1}, then x_{i+1} = DDIM_w(x_i, null_i) (Mokady et al. 2023, Alg. 1).

    x* is the DDIM inversion at w = 1 (``refine`` fixed-point iterations per step), DDIM_w the DDIM
    step with D_w. Every floating-point tensor of the ``null`` condition is optimized, one copy per
    sample (the loss is a sum of per-sample losses, so samples do not interact); integer entries
    pass through. ``iterations`` is fixed (the paper's early stop at a loss threshold would make
    a sample's result depend on its batch). Adam moves each element by about ``lr`` per
    iteration, so lr should match the null input's per-element scale: the paper's 1e-2 barely
    moves difflab's MNIST class embedding (elements ~1; round-trip error 0.165 -> 0.138 in 10
    iterations at w = 2, against 0.055 at lr 0.1). Not exact: the residual is what the null
    input's dimension can reach (128 numbers per step for MNIST's 784 pixels).
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if guide.null is None or not any(
        isinstance(v, Tensor) and v.is_floating_point() for v in guide.null.values()
    ):
        raise ValueError(
            "null-text inversion optimizes the unconditional input: give null={name: float "
            "tensor}, e.g. for a difflab network null={'class_embedding': null_embedding(net, B)} "
            "with the denoiser difflab.models.class_embedding.embedding_denoiser(model)"
        )
    path = _pivot(guide, x, sigmas, refine)
    grid = guide.grid(x, sigmas)
    w, current, nulls = guide.guidance, dict(guide.null), []
    x = path[0]
    for i in range(grid.steps):
        hi, lo, sigma = sigmas[i], sigmas[i + 1], grid.sigma(i)
        d_cond = guide.denoiser(x, sigma, **guide.cond)
        current = {
            k: v.detach().clone() if isinstance(v, Tensor) else v for k, v in current.items()
        }
        params = [v for v in current.values() if isinstance(v, Tensor) and v.is_floating_point()]
        opt = torch.optim.Adam([v.requires_grad_() for v in params], lr=lr)
        with torch.enable_grad():
            for _ in range(iterations):
                d_null = guide.denoiser(x, sigma, **current)
                step = ddim_step(x, d_null + w * (d_cond - d_null), hi, lo)
                loss = (step - path[i + 1]).square().flatten(1).mean(1).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        current = {k: v.detach() if isinstance(v, Tensor) else v for k, v in current.items()}
        nulls.append(current)
        d_null = guide.denoiser(x, sigma, **current)
        x = ddim_step(x, d_null + w * (d_cond - d_null), hi, lo)
    return latent(path[0], nulls=tuple(nulls), options={"iterations": iterations, "lr": lr})


def sample_null_text(guide: Guide, z: Latent) -> Tensor:
    """DDIM at guidance w with step i's optimized null condition."""
    sigmas, x = z.sigmas.tolist(), z.x
    grid = guide.grid(x, sigmas)
    for i, null in enumerate(z.nulls):
        x = ddim_step(x, guide.with_(null=null)(x, grid.sigma(i)), sigmas[i], sigmas[i + 1])
    return x


def direct(guide: Guide, x: Tensor, sigmas: list[float], *, refine: int = 0) -> Latent:
    """Direct Inversion: offset_i = x*_{i+1} - DDIM_w(x*_i), and sampling adds offset_i after each
    guided DDIM step (Ju et al. 2024, "PnP Inversion", Alg. 1).

    x* is the DDIM inversion at w = 1. Under the inversion's condition the corrected path is x*
    itself, so reconstruction is exact up to rounding at any w; under another condition the same
    offsets pull the guided path towards the source's (the paper adds them to its source branch
    and edits through attention sharing, which a class-conditional network does not have).
    """
    path = _pivot(guide, x, sigmas, refine)
    grid = guide.grid(x, sigmas)
    offsets = tuple(
        path[i + 1] - ddim_step(path[i], grid.denoise(path[i], i), sigmas[i], sigmas[i + 1])
        for i in range(grid.steps)
    )
    return latent(path[0], offsets=offsets, options={"refine": refine})


def sample_direct(guide: Guide, z: Latent) -> Tensor:
    """Guided DDIM with the stored offset added after each step."""
    sigmas, x = z.sigmas.tolist(), z.x
    grid = guide.grid(x, sigmas)
    for i, offset in enumerate(z.offsets):
        x = ddim_step(x, grid.denoise(x, i), sigmas[i], sigmas[i + 1]) + offset
    return x


register(
    Method(
        "null_text",
        null_text,
        sample_null_text,
        exact="no",
        cost="inversion: 1 + refine per step at w = 1, then per step 2 + iterations forward and "
        "iterations backward passes; sampling: DDIM at w",
    )
)
register(
    Method(
        "direct",
        direct,
        sample_direct,
        exact="algebraic",
        cost="inversion: 1 + refine per step at w = 1 and 1 guided; sampling: DDIM at w",
    )
)
