"""What every inversion method shares: the inverted state (:class:`Latent`), the step grid, the guided
denoiser and the method registry.

An inversion runs a deterministic sampler's grid backwards: the input x is the state at the grid's
last (smallest, nonzero) level sigmas[-1], the latent is the state at sigmas[0], and sampling the
latent down the same grid gives x back (exactly, for the exact methods). A trailing sigma = 0 is
dropped: a sampler's final step into 0 maps x to D(x, sigma_min)-like values and has no inverse,
so the input is taken as the state at the last nonzero level (for images, sigma_min = 0.002 is far
below one grey level).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from difflab.core.tensors import as_tensor, check_finite, unknown_name
from difflab.guidance import classifier_free
from difflab.sampling.registry import SamplerGrid

__all__ = [
    "Guide",
    "Latent",
    "Method",
    "available",
    "get",
    "inversion_grid",
    "invert",
    "latent",
    "register",
    "sample",
]

Denoiser = Callable[..., Tensor]
Cond = dict[str, Any]


@dataclass(frozen=True)
class Latent:
    """An inverted batch: the noise ``x`` at ``sigmas[0]`` and what its method's sampler needs to
    retrace the path down to ``sigmas[-1]``. ``sample(denoiser, latent)`` reconstructs the input;
    ``sample(denoiser, latent, cond=other)`` re-generates it under another condition."""

    method: str
    x: Tensor  # the state at sigmas[0] [B, ...]
    sigmas: Tensor  # the sampling grid (float64, decreasing, sigmas[-1] > 0 the input's level)
    cond: Cond = field(default_factory=dict)  # the condition it was inverted under
    guidance: float = 1.0  # the classifier-free guidance scale it was inverted with
    null: Cond | None = None  # the unconditional condition (None: labels -1)
    partner: Tensor | None = None  # EDICT: the second sequence y; BDIA: the state at sigmas[1]
    nulls: tuple[Cond, ...] = ()  # null-text inversion: the optimized null condition per step
    offsets: tuple[Tensor, ...] = ()  # Direct Inversion: the correction added after each step
    options: dict[str, Any] = field(default_factory=dict)  # the method's own settings


@dataclass(frozen=True)
class Guide:
    """The denoiser a method integrates: D_w(x, s) = D(x, s, null) + w (D(x, s, cond) - D(x, s, null))
    (classifier-free guidance, Ho & Salimans 2022); w = 1 is D(x, s, cond). ``null`` None is the
    label -1 of :func:`difflab.guidance.classifier_free` (both halves in one batch of 2B)."""

    denoiser: Denoiser
    cond: Cond
    guidance: float = 1.0
    null: Cond | None = None

    def __post_init__(self) -> None:
        w = self.guidance
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise ValueError(f"guidance must be a finite number >= 0 (1 = none), got {w!r}")
        if w != 1 and self.null is None and "labels" not in self.cond:
            raise ValueError(
                "guidance != 1 needs a condition: cond={'labels': ...} (the null label is -1) or "
                "an explicit null condition"
            )

    @cached_property
    def _labels_cfg(self) -> Denoiser:
        return classifier_free(self.denoiser, self.guidance)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        w = self.guidance
        if w == 1:
            return self.denoiser(x, sigma, **self.cond)
        if self.null is None:
            return self._labels_cfg(x, sigma, **self.cond)
        uncond = self.denoiser(x, sigma, **self.null)
        return uncond + w * (self.denoiser(x, sigma, **self.cond) - uncond)

    def grid(self, x: Tensor, sigmas: Sequence[float]) -> SamplerGrid:
        """The sampling module's grid over D_w: ``grid.denoise(x, i)`` = D_w(x, sigmas[i])."""
        return SamplerGrid(self, x, sigmas, None, None)

    def with_(self, **changes: Any) -> Guide:
        return replace(self, **changes)


def inversion_grid(sigmas: Tensor | Sequence[float]) -> list[float]:
    """The grid as host floats: 1-D, finite, strictly decreasing, a trailing 0 dropped (module
    docstring), at least two levels left."""
    s = as_tensor(sigmas).detach().to("cpu", torch.float64)
    if s.ndim != 1:
        raise ValueError(f"sigmas must be a 1-D grid, got shape {tuple(s.shape)}")
    if len(s) and float(s[-1]) == 0:
        s = s[:-1]
    if len(s) < 2:
        raise ValueError(
            "an inversion grid needs at least two nonzero levels (sigma_max ... sigma_min > 0)"
        )
    if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
        raise ValueError("inversion sigmas must be finite and > 0 (only a trailing 0 is allowed)")
    bad = torch.nonzero(s[1:] >= s[:-1]).flatten()
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"sigmas must be strictly decreasing: sigmas[{i}] = {float(s[i]):g} <= "
            f"sigmas[{i + 1}] = {float(s[i + 1]):g}"
        )
    return s.tolist()


@dataclass(frozen=True)
class Method:
    """An inversion method: ``invert(guide, x, sigmas, **options) -> Latent`` (sigmas: host floats of
    :func:`inversion_grid`), ``sample(guide, latent) -> x``, whether the round trip is exact, and
    its network evaluations (D_w at w != 1 costs two)."""

    name: str
    invert: Callable[..., Latent]
    sample: Callable[[Guide, Latent], Tensor]
    exact: str  # "algebraic", "fixed point" (exact as its iterations converge) or "no"
    cost: str  # network evaluations per step, in words

    @property
    def summary(self) -> str:
        return (self.invert.__doc__ or self.name).strip().splitlines()[0]


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry under its name."""
    if method.name in _REGISTRY:
        raise ValueError(f"inversion method {method.name!r} registered twice")
    _REGISTRY[method.name] = method
    return method


def latent(x: Tensor, **fields: Any) -> Latent:
    """A method's result; :func:`invert` fills in the method, grid, conditions and guidance."""
    return Latent("", x, torch.empty(0), **fields)


def _load() -> None:
    from difflab.inversion import cfg, flow, reversible  # noqa: F401  (registers the methods)


def available() -> list[str]:
    """The registered inversion methods."""
    _load()
    return sorted(_REGISTRY)


def get(name: str) -> Method:
    """The inversion method ``name`` (an unknown name lists the valid ones, nearest first)."""
    _load()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise unknown_name("inversion method", name, _REGISTRY)
    return _REGISTRY[name]


def _check_cond(cond: Cond | None, what: str) -> Cond:
    if cond is None:
        return {}
    if not isinstance(cond, dict):
        raise ValueError(f"{what} must be a dict of keyword arguments for the denoiser")
    return cond


@torch.no_grad()
def invert(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor | Sequence[float],
    *,
    method: str = "edict",
    cond: Cond | None = None,
    guidance: float = 1.0,
    null: Cond | None = None,
    **options: Any,
) -> Latent:
    """The latent at sigmas[0] whose sample down ``sigmas`` under ``cond`` is x (the state at
    sigmas[-1]), by ``method`` (see :func:`available`), guided by D_w of :class:`Guide`."""
    m = get(method)
    if not isinstance(x, Tensor) or x.ndim < 1 or not x.is_floating_point():
        raise ValueError("x must be a floating-point tensor [B, ...]")
    check_finite(x, "x")
    s = inversion_grid(sigmas)
    guide = Guide(denoiser, _check_cond(cond, "cond"), guidance, _check_cond(null, "null") or None)
    result = m.invert(guide, x, s, **options)
    grid = torch.tensor(s, dtype=torch.float64)
    return replace(
        result, method=method, sigmas=grid, cond=guide.cond, guidance=guidance, null=guide.null
    )


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    latent: Latent,
    *,
    cond: Cond | None = None,
    guidance: float | None = None,
) -> Tensor:
    """Sample ``latent`` down its grid with its method's sampler under ``cond`` (default: the
    inversion's condition, which reconstructs the input; another one edits it) at the inversion's
    guidance scale unless ``guidance`` is given."""
    guide = Guide(
        denoiser,
        latent.cond if cond is None else _check_cond(cond, "cond"),
        latent.guidance if guidance is None else guidance,
        latent.null,
    )
    return get(latent.method).sample(guide, latent)
