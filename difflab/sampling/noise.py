"""Seeded noise that makes sampling batch-invariant: one generator per sample, so a sample's noise
does not depend on what else is in its batch (DESIGN.md, Principles)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["generators", "rand", "randn"]


def generators(seed: int, n: int, device: str | torch.device = "cpu") -> list[torch.Generator]:
    """n independent generators for samples 0..n-1 of run ``seed`` (numpy SeedSequence spawning, so
    (seed, i) pairs never collide)."""
    states = np.random.SeedSequence(seed).spawn(n)
    return [
        torch.Generator(device=device).manual_seed(
            int(s.generate_state(1, np.uint64)[0] >> np.uint64(1))
        )
        for s in states
    ]


def _draw(
    fn: Callable[..., Tensor],
    shape: Sequence[int],
    generator: torch.Generator | Sequence[torch.Generator] | None,
    dtype: torch.dtype,
    device: str | torch.device,
) -> Tensor:
    if generator is None or isinstance(generator, torch.Generator):
        return fn(
            tuple(shape),
            generator=generator,
            dtype=dtype,
            device=generator.device if generator else device,
        ).to(device)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {shape[0]}")
    rows = [fn(tuple(shape[1:]), generator=g, dtype=dtype, device=g.device) for g in gens]
    return torch.stack(rows).to(device)


def randn(
    shape: Sequence[int],
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Standard normal noise of ``shape`` [B, ...]; with a list of B generators, row i comes from
    generator i alone."""
    return _draw(torch.randn, shape, generator, dtype, device)


def rand(
    shape: Sequence[int],
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Uniform numbers in [0, 1) of ``shape`` [B, ...]; with a list of B generators, row i comes
    from generator i alone."""
    return _draw(torch.rand, shape, generator, dtype, device)
