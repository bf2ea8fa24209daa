"""Optimized step grids saved with a model and used by name (:meth:`difflab.pretrained.Model.grid`).

A model folder keeps the grids fitted to it as ``<model>/schedules/<sampler>_<nfe>.json``
(:class:`difflab.schedules.OptimizedGrid` JSON; the folder keeps its version-1 name);
``schedule="optimized:<sampler>:<nfe>"`` finds one.
:func:`optimize_model` fits one: the reference is a high-NFE solve of the model's own probability-flow
ODE from calibration noise (class labels cycling through the classes, the model's default guidance),
and the reported error is on held-out noise.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from difflab import sampling
from difflab.core import grids
from difflab.schedules.optimize import OptimizedGrid, optimize
from difflab.utils.files import atomic_write_bytes

__all__ = [
    "PREFIX",
    "Calibration",
    "calibrate",
    "grid_name",
    "grid_path",
    "load_grid",
    "optimize_model",
    "parse_grid_name",
    "save_grid",
    "saved_grids",
]

PREFIX = "optimized:"
FOLDER = "schedules"
_NAME = re.compile(r"optimized:([A-Za-z0-9_]+):([0-9]+)")


def grid_name(sampler: str, nfe: int) -> str:
    """The name a saved grid is used by: ``optimized:<sampler>:<nfe>``."""
    return f"{PREFIX}{sampler}:{nfe}"


def parse_grid_name(name: str) -> tuple[str, int]:
    """(sampler, nfe) of ``optimized:<sampler>:<nfe>``."""
    m = _NAME.fullmatch(name.strip())
    if m is None:
        raise ValueError(
            f"cannot read the grid name {name!r}: optimized grids are named "
            "optimized:SAMPLER:NFE, e.g. optimized:dpmpp_2m:8"
        )
    return m[1], int(m[2])


def grid_path(folder: str | os.PathLike[str], sampler: str, nfe: int) -> Path:
    """``<folder>/schedules/<sampler>_<nfe>.json``."""
    return Path(folder) / FOLDER / f"{sampler}_{nfe}.json"


def saved_grids(folder: str | os.PathLike[str] | None) -> list[str]:
    """Names of the optimized grids saved in a model folder, by sampler then NFE."""
    if folder is None or not (Path(folder) / FOLDER).is_dir():
        return []
    found = []
    for path in (Path(folder) / FOLDER).glob("*.json"):
        sampler, _, nfe = path.stem.rpartition("_")
        if sampler and nfe.isdigit():
            found.append((sampler, int(nfe)))
    return [grid_name(s, n) for s, n in sorted(found)]


def save_grid(folder: str | os.PathLike[str], grid: OptimizedGrid) -> Path:
    """Write ``grid`` into the model folder (atomically) as :func:`grid_path`; returns the path."""
    path = grid_path(folder, grid.sampler, grid.nfe)
    try:
        path.parent.mkdir(exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot write into {folder}: {e.strerror or e}") from None
    atomic_write_bytes(path, grid.to_json().encode())
    return path


def load_grid(folder: str | os.PathLike[str] | None, name: str, model: str = "the model") -> Tensor:
    """The sigmas of the grid ``optimized:<sampler>:<nfe>`` saved in a model folder; a missing one
    is a ValueError listing the grids the model has."""
    sampler, nfe = parse_grid_name(name)
    path = None if folder is None else grid_path(folder, sampler, nfe)
    if path is None or not path.is_file():
        have = saved_grids(folder)
        listing = f"it has {', '.join(have)}" if have else "it has none"
        raise ValueError(
            f"{model} has no optimized grid {name} ({listing}; make one with `difflab schedule "
            f"optimize --model {model} --sampler {sampler} --nfe {nfe}`)"
        )
    try:
        saved = OptimizedGrid.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"cannot read the grid {path}: {e}") from None
    return saved.sigmas


@dataclass
class Calibration:
    """A model's calibration and held-out starting noises x = sigma_max eps (with their class
    labels), the denoiser they run through (guided at the model's default scale), and their
    reference endpoints: one high-NFE solve each, computed on first use and kept."""

    denoiser: Callable[..., Tensor]
    calibration: Tensor
    held_out: Tensor
    cond: dict[str, Tensor]
    sigma_min: float
    sigma_max: float
    reference_sampler: str
    reference_steps: int
    progress: bool = True
    _references: tuple[Tensor, Tensor] | None = field(default=None, init=False, repr=False)

    @property
    def references(self) -> tuple[Tensor, Tensor]:
        """(calibration endpoints, held-out endpoints) of the reference solve."""
        if self._references is None:
            self._references = (self._solve(self.calibration), self._solve(self.held_out))
        return self._references

    def _solve(self, x: Tensor) -> Tensor:
        from tqdm.auto import tqdm

        fn = sampling.get(self.reference_sampler)
        sigmas = grids.karras(self.reference_steps, self.sigma_min, self.sigma_max)
        with (
            tqdm(
                total=self.reference_steps, desc="reference", disable=not self.progress, leave=False
            ) as bar,
            torch.no_grad(),
        ):
            return fn(self.denoiser, x, sigmas, cond=self.cond, callback=lambda *_: bar.update())


def calibrate(
    model: Any,
    n: int = 32,
    *,
    seed: int = 0,
    guidance: float | None = None,
    reference: str = "dpmpp_3m",
    reference_steps: int = 100,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    progress: bool = True,
) -> Calibration:
    """The calibration of a :class:`difflab.pretrained.Model`: n starting noises sigma_max eps_i
    drawn as ``model.sample(seed=seed)`` draws them, n held-out ones from ``seed + 1``, labels
    i mod C for a class-conditional model, guidance at ``guidance`` (default: the model's,
    :meth:`~difflab.pretrained.Model.guided`), between ``sigma_min`` and ``sigma_max`` (default:
    the model's sampling range)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the calibration size must be a positive integer, got {n!r}")
    d = model.defaults
    process = model.process
    sigma_min = float(sigma_min or d.get("sigma_min") or process.sigma_min)
    sigma_max = float(sigma_max or d.get("sigma_max") or process.sigma_max)
    if not math.isfinite(sigma_max):
        raise ValueError(
            f"{model.name} starts sampling at sigma = inf (zero terminal SNR); an optimized grid "
            "needs a finite start: give sigma_max"
        )
    labels = model.class_labels(None, n)
    denoiser = model.guided(guidance)
    cond = {} if labels is None else {"labels": labels.to(model.device)}

    def noise(s: int) -> Tensor:
        gens = sampling.generators(s, n, model.device)
        return sigma_max * sampling.randn((n, *model.shape), gens, torch.float32, model.device)

    return Calibration(
        denoiser, noise(seed), noise(seed + 1), cond, sigma_min, sigma_max, reference,
        reference_steps, progress,
    )  # fmt: skip


def optimize_model(
    model: Any,
    sampler: str,
    nfe: int,
    calibration: Calibration | None = None,
    *,
    method: str = "direct",
    seed: int = 0,
    progress: bool = True,
    **options: Any,
) -> OptimizedGrid:
    """:func:`difflab.schedules.optimize` for a saved model, on ``calibration`` (default:
    :func:`calibrate` ``(model, seed=seed)``); ``options`` go to the optimizer."""
    calibration = calibration or calibrate(model, seed=seed, progress=progress)
    return optimize(
        calibration.denoiser, sampler, nfe, calibration.calibration,
        sigma_min=calibration.sigma_min, sigma_max=calibration.sigma_max, method=method,
        seed=seed, reference=calibration.references, held_out=calibration.held_out,
        cond=calibration.cond, progress=progress, **options,
    )  # fmt: skip
