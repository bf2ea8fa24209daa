"""The one denoiser transformation every CFG-like method shares: evaluate a positive and a negative
branch at the same (x, sigma), combine them with a rule, optionally only for sigma inside an interval
(Kynkäänniemi et al. 2024). A guided denoiser is still a denoiser, so every sampler works with it.

Branches differ by method (classifier-free: one network with and without the label, evaluated as one
batch; autoguidance: a good and a weak network; perturbed attention: one network with and without its
attention maps); rules differ by how they combine (CFG, rescale, APG, CFG-Zero*: see
:mod:`difflab.guidance.rules`).

State: a rule may keep state along one sampling trajectory (APG's momentum). A trajectory starts at
the first evaluation, and a new one starts whenever the batch shape changes or the noise level rises
above the last one seen (a sampler's next call starts again at sigma_max), so one guided denoiser can
drive many sampling calls; a sampler that evaluates sub-batches (the adaptive ones) restarts it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from difflab.core.tensors import as_tensor, broadcast_sigma
from difflab.guidance.rules import Rule, as_rule

__all__ = [
    "Branches",
    "Denoiser",
    "check_interval",
    "condition_branches",
    "guide",
    "label_branches",
]

Denoiser = Callable[..., Tensor]


@dataclass(frozen=True)
class Branches:
    """The two evaluations a rule combines: ``positive(x, sigma, **cond)`` alone (used where guidance
    is off) and ``both(x, sigma, **cond) -> (positive, negative)`` (one batch where possible)."""

    positive: Denoiser
    both: Callable[..., tuple[Tensor, Tensor]]


def check_interval(interval: tuple[float, float] | None) -> tuple[float, float] | None:
    """A (lo, hi) noise-level interval with 0 <= lo < hi (hi may be inf), or a ValueError."""
    if interval is None:
        return None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"sigma interval must be two numbers (lo, hi), got {interval!r}") from None
    if not 0 <= lo < hi:
        raise ValueError(f"sigma interval must satisfy 0 <= lo < hi, got ({lo:g}, {hi:g})")
    return lo, hi


class _Trajectory:
    """The rule's state for one sampling trajectory (module docstring)."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self._shape: tuple[int, ...] | None = None
        self._sigma = float("inf")

    def at(self, x: Tensor, sigma: Tensor) -> dict[str, Any]:
        top = float(sigma.max())
        if tuple(x.shape) != self._shape or top > self._sigma:
            self.state = {}
        self._shape, self._sigma = tuple(x.shape), top
        return self.state


def guide(
    branches: Branches,
    rule: float | Rule,
    sigma_interval: tuple[float, float] | None = None,
) -> Denoiser:
    """D_guided(x, sigma) = rule(P, N) for sigma in ``sigma_interval`` (all sigma when None), and the
    positive branch P alone elsewhere (Kynkäänniemi et al. 2024), where the negative branch is not
    evaluated. ``rule`` is a rule or a CFG scale w (N + w (P - N))."""
    rule = as_rule(rule)
    interval = check_interval(sigma_interval)
    trajectory = _Trajectory() if not rule.identity else None

    def guided(x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        if trajectory is None:
            return branches.positive(x, sigma, **cond)
        s = broadcast_sigma(as_tensor(sigma).to(device=x.device), x)
        inside = None
        if interval is not None:
            inside = (s >= interval[0]) & (s <= interval[1])
            if not bool(inside.any()):
                return branches.positive(x, sigma, **cond)
        pos, neg = branches.both(x, sigma, **cond)
        sx = s.to(x.dtype)
        out = rule(pos, neg, x, sx, trajectory.at(x, s))
        return out if inside is None else torch.where(inside, out, pos)

    return guided


def _per_sample(value: Any, batch: int) -> bool:
    return isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == batch


def condition_branches(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor | float,
    branches: dict[str, Tensor],
    **cond: Any,
) -> Tensor:
    """[K, B, ...]: D(x, sigma, **{key: value[k]}) for each k, ``branches`` mapping condition keys
    to K values per sample [K, B, ...], evaluated as one batch of K B (per-sample sigma and the
    other conditions repeated)."""
    b, k = x.shape[0], next(iter(branches.values())).shape[0]
    for key, value in branches.items():
        if value.shape[:2] != (k, b):
            raise ValueError(
                f"branches of {key!r} must be [{k}, {b}, ...], got {tuple(value.shape)}"
            )
    sigma = as_tensor(sigma).to(x.device)
    repeat = lambda v: v.repeat(k, *([1] * (v.ndim - 1)))  # noqa: E731
    out = denoiser(
        repeat(x),
        repeat(sigma) if _per_sample(sigma, b) else sigma,
        **{n: v.reshape(k * b, *v.shape[2:]) for n, v in branches.items()},
        **{n: repeat(v) if _per_sample(v, b) else v for n, v in cond.items()},
    )
    return out.reshape(k, *x.shape)


def label_branches(
    denoiser: Denoiser, x: Tensor, sigma: Tensor | float, labels: Tensor, **cond: Any
) -> Tensor:
    """[K, B, ...]: D(x, sigma, labels[:, k]) for each column k of ``labels`` [B, K], evaluated as one
    batch of K B (per-sample sigma and conditioning repeated)."""
    return condition_branches(denoiser, x, sigma, {"labels": labels.T}, **cond)
