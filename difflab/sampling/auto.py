"""``auto``: the sampler, options and step grid that the project's own benchmark found most accurate
for an NFE budget (``benchmarks/samplers.py --write-auto``, stored in ``auto.json`` beside this file)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from difflab.core import grids
from difflab.sampling.registry import Callback, DenoiserFn, get, info

__all__ = ["AutoChoice", "auto", "choose"]

TABLE = Path(__file__).with_name("auto.json")


@dataclass(frozen=True)
class AutoChoice:
    """What ``auto`` runs for a budget: the sampler, its options, the grid and the step count."""

    sampler: str
    options: dict[str, Any]
    grid: str
    grid_options: dict[str, Any]
    steps: int
    nfe: int
    measured_at: int  # the benchmark budget this entry was chosen at


@functools.cache
def _entries() -> list[dict[str, Any]]:
    return sorted(json.loads(TABLE.read_text())["entries"], key=lambda e: e["nfe"])


def choose(nfe: int) -> AutoChoice:
    """The benchmark's choice for the largest measured budget <= ``nfe``, with as many steps as fit."""
    entries = [e for e in _entries() if e["nfe"] <= nfe]
    if not entries:
        smallest = _entries()[0]["nfe"]
        raise ValueError(f"auto needs an NFE budget of at least {smallest}, got {nfe}")
    e = entries[-1]
    entry = info(e["sampler"])
    steps = entry.steps_for(nfe, **e["options"])
    return AutoChoice(
        e["sampler"],
        e["options"],
        e["grid"],
        e["grid_options"],
        steps,
        entry.nfe(steps, **e["options"]),
        e["nfe"],
    )


def auto(
    denoiser: DenoiserFn,
    x: Tensor,
    nfe: int,
    sigma_min: float,
    sigma_max: float,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    cond: dict[str, Any] | None = None,
    **options: Any,
) -> Tensor:
    """Sample with at most ``nfe`` denoiser evaluations using the most accurate sampler and grid the
    benchmark measured for that budget; x is the noise times sigma_max. ``options`` override the
    chosen sampler's options."""
    choice = choose(nfe)
    sigmas = grids.get(choice.grid)(choice.steps, sigma_min, sigma_max, **choice.grid_options)
    return get(choice.sampler)(
        denoiser,
        x,
        sigmas,
        generator=generator,
        callback=callback,
        cond=cond,
        **{**choice.options, **options},
    )
