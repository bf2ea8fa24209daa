"""2-D toy distributions, sampled exactly: ``toy(n, generator) -> [n, 2]`` float32.

Each is standardized by its own analytic moments (not the sample's): mean 0 and E|x|^2 = 2, i.e. unit
variance per coordinate on average, with the shape's aspect ratio kept. The two Gaussian mixtures are
also available as exact models (:func:`mixture`), whose denoiser judges a network trained on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from difflab.core.tensors import check_name, unknown_name
from difflab.data.dataset import Dataset, check_split
from difflab.testing.gmm import GaussianMixture, ring2d

__all__ = [
    "TOYS",
    "checkerboard",
    "eight_gaussians",
    "grid_gaussians",
    "load",
    "mixture",
    "moons",
    "rings",
    "swiss_roll",
]

Toy = Callable[[int, "torch.Generator | None"], Tensor]

_MOONS_NOISE = 0.1
_SWISS_NOISE = 0.5
_RINGS_NOISE = 0.08
_RINGS_RADII = (1.0, 2.0, 3.0, 4.0)


def _standardized(x: Tensor, mean: tuple[float, float], variance: float) -> Tensor:
    """(x - mean) / sqrt(variance), with variance = E|x - mean|^2 / 2 of the exact distribution."""
    return ((x - torch.tensor(mean, dtype=x.dtype)) / math.sqrt(variance)).to(torch.float32)


def _uniform(n: int, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, dtype=torch.float64, generator=generator)


def _noise(n: int, generator: torch.Generator | None) -> Tensor:
    return torch.randn(n, 2, dtype=torch.float64, generator=generator)


def moons(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Two interleaved half circles (cos t, sin t) and (1 - cos t, 1/2 - sin t), t ~ U[0, pi], plus
    N(0, 0.1^2) noise (scikit-learn's make_moons; Grathwohl et al., 2019)."""
    t = math.pi * _uniform(n, generator)
    lower = torch.randint(0, 2, (n,), generator=generator).bool()
    upper_arc = torch.stack([t.cos(), t.sin()], 1)
    lower_arc = torch.stack([1 - t.cos(), 0.5 - t.sin()], 1)
    x = torch.where(lower[:, None], lower_arc, upper_arc) + _MOONS_NOISE * _noise(n, generator)
    # E x = (1/2, 1/4); Var x1 = 3/4, Var x2 = 9/16 - 1/pi
    return _standardized(x, (0.5, 0.25), (0.75 + 0.5625 - 1 / math.pi) / 2 + _MOONS_NOISE**2)


def swiss_roll(n: int, generator: torch.Generator | None = None) -> Tensor:
    """The 2-D Swiss roll (t cos t, t sin t), t ~ U[3 pi / 2, 9 pi / 2], plus N(0, 0.5^2) noise
    (scikit-learn's make_swiss_roll, first and third axes; Grathwohl et al., 2019)."""
    t = 1.5 * math.pi * (1 + 2 * _uniform(n, generator))
    x = torch.stack([t * t.cos(), t * t.sin()], 1) + _SWISS_NOISE * _noise(n, generator)
    # E x = (2, 2 / (3 pi)); E t^2 = 39 pi^2 / 4
    mean = (2.0, 2 / (3 * math.pi))
    variance = (9.75 * math.pi**2 - mean[0] ** 2 - mean[1] ** 2) / 2 + _SWISS_NOISE**2
    return _standardized(x, mean, variance)


def checkerboard(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform on the 8 black unit squares of a 4x4 board on [-2, 2]^2 (Grathwohl et al., 2019)."""
    x1 = 4 * _uniform(n, generator) - 2
    row = 2 * torch.randint(0, 2, (n,), generator=generator) - torch.remainder(x1.floor(), 2)
    x2 = _uniform(n, generator) - row
    # both marginals are U[-2, 2]: mean 0, variance 4/3
    return _standardized(torch.stack([x1, x2], 1), (0.0, 0.0), 4 / 3)


def rings(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Four concentric circles of radii 1, 2, 3, 4, equally likely, plus N(0, 0.08^2) noise
    (Grathwohl et al., 2019)."""
    radii = torch.tensor(_RINGS_RADII, dtype=torch.float64)
    r = radii[torch.randint(0, len(radii), (n,), generator=generator)]
    angle = 2 * math.pi * _uniform(n, generator)
    x = r[:, None] * torch.stack([angle.cos(), angle.sin()], 1) + _RINGS_NOISE * _noise(
        n, generator
    )
    return _standardized(x, (0.0, 0.0), float(radii.square().mean()) / 2 + _RINGS_NOISE**2)


def mixture(name: str) -> GaussianMixture:
    """The exact standardized mixture behind "8gaussians" (8 modes of std 0.5 on a circle of radius 4;
    Grathwohl et al., 2019) or "25gaussians" (a 5x5 grid of spacing 2, std 0.05; Srivastava et al., 2017)."""
    if name == "8gaussians":
        radius, std = 4.0, 0.5
        scale = math.sqrt(radius**2 / 2 + std**2)
        return ring2d(8, radius / scale, std / scale)
    if name == "25gaussians":
        axis = torch.arange(-4.0, 5.0, 2.0, dtype=torch.float64)
        means = torch.cartesian_prod(axis, axis)
        std = 0.05
        scale = math.sqrt(float(axis.square().mean()) + std**2)
        return GaussianMixture(torch.ones(len(means)), means / scale, (std / scale) ** 2)
    raise unknown_name("toy mixture", name, ["8gaussians", "25gaussians"])


def eight_gaussians(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Samples of :func:`mixture` ("8gaussians"): 8 equal modes on a circle (Grathwohl et al., 2019)."""
    return mixture("8gaussians").sample(n, generator).to(torch.float32)


def grid_gaussians(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Samples of :func:`mixture` ("25gaussians"): a 5x5 grid of modes (Srivastava et al., 2017)."""
    return mixture("25gaussians").sample(n, generator).to(torch.float32)


TOYS: dict[str, Toy] = {
    "moons": moons,
    "swiss_roll": swiss_roll,
    "checkerboard": checkerboard,
    "rings": rings,
    "8gaussians": eight_gaussians,
    "25gaussians": grid_gaussians,
}


def load(name: str, split: str = "train", *, n: int = 100_000, seed: int = 0) -> Dataset:
    """``n`` samples of toy ``name``; the train and test splits of a seed use distinct streams
    (generator seeds 2 seed and 2 seed + 1)."""
    check_name("toy data set", name, TOYS)
    check_split(name, split, ("train", "test"))
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"toy data set {name!r}: n must be a positive integer, got {n!r}")
    generator = torch.Generator().manual_seed(2 * seed + (split == "test"))
    return Dataset(TOYS[name](n, generator), name=f"{name}/{split}")
