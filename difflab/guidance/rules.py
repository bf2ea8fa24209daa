"""Guidance rules: how a guided prediction is formed from a positive branch (the conditional, good
or unperturbed denoiser) and a negative one (unconditional, weak or perturbed), both at the same x and
sigma. Every CFG-like method is one rule applied to one pair of branches, so any rule works with any
pair (classifier-free guidance, autoguidance, perturbed-attention guidance).

Scales follow classifier-free guidance: ``scale`` w = 1 returns the positive branch, w = 0 the negative.

A rule combines the branches in a *space*. Linear combinations whose weights sum to 1 (plain CFG) are
the same in every space, because every prediction type is an affine function a(sigma) x + b(sigma) D
of the denoiser output; norms, projections and optimised scales are not, so each rule names its space:

- ``"x0"``: the denoiser output D = E[x0 | x] itself;
- ``"velocity"``: the rectified-flow velocity u = eps - x0 of x_t = (1 - t) x0 + t eps, in which
  CFG-Zero* is defined. The rule sees sigma * u = x - (1 + sigma) D (u = x - D at sigma = inf, where
  x holds the unit noise), which never divides by sigma; every rule here is invariant to that positive
  per-sample factor except APG's norm threshold, which then bounds sigma ||delta u||.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from difflab.core.tensors import unknown_name

__all__ = [
    "APG",
    "CFG",
    "SPACES",
    "CFGZeroStar",
    "Rule",
    "as_rule",
    "available",
    "from_space",
    "get",
    "to_space",
]

SPACES = ("x0", "velocity")


class Rule(Protocol):
    """``rule(pos, neg, x, sigma, state) -> guided D``; ``sigma`` is broadcast against x and
    ``state`` is a dict that lives for one sampling trajectory (see :func:`difflab.guidance.guide`)."""

    scale: float

    @property
    def identity(self) -> bool: ...

    def __call__(
        self, pos: Tensor, neg: Tensor, x: Tensor, sigma: Tensor, state: dict[str, Any]
    ) -> Tensor: ...


def _velocity_factor(sigma: Tensor) -> Tensor:
    """b(sigma) in sigma u = x + b D: -(1 + sigma), and -1 at sigma = inf (u = x - D there)."""
    return torch.where(torch.isinf(sigma), -1.0, -(1 + sigma))


def to_space(space: str, d: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
    """The prediction D expressed in ``space`` (module docstring); sigma broadcast against x."""
    return d if space == "x0" else x + _velocity_factor(sigma) * d


def from_space(space: str, p: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
    """The denoiser output D whose prediction in ``space`` is p (the inverse of :func:`to_space`)."""
    return p if space == "x0" else (p - x) / _velocity_factor(sigma)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner products <a_i, b_i>, shaped [B, 1, ...] to broadcast against a."""
    return (a * b).flatten(1).sum(1).reshape(-1, *([1] * (a.ndim - 1)))


def _check_scale(scale: float) -> None:
    if not (isinstance(scale, int | float) and math.isfinite(scale)) or scale < 0:
        raise ValueError(
            f"guidance scale must be a finite number >= 0 (1 = no guidance), got {scale}"
        )


def _check_space(space: str) -> None:
    if space not in SPACES:
        raise unknown_name("guidance space", space, SPACES)


_TINY = 1e-12  # keeps a zero prediction's projection finite (it is then 0)


@dataclass(frozen=True)
class CFG:
    """G = N + w (P - N) (Ho & Salimans 2022), then with ``rescale`` phi > 0 the guidance rescale of
    Lin et al. 2024 (Alg. 2): G <- phi G std(P)/std(G) + (1 - phi) G, std per sample, in ``space``."""

    scale: float
    rescale: float = 0.0
    space: str = "x0"

    def __post_init__(self) -> None:
        _check_scale(self.scale)
        if not 0 <= self.rescale <= 1:
            raise ValueError(f"guidance rescale phi must be in [0, 1], got {self.rescale}")
        _check_space(self.space)

    @property
    def identity(self) -> bool:
        return self.scale == 1

    def __call__(
        self, pos: Tensor, neg: Tensor, x: Tensor, sigma: Tensor, state: dict[str, Any]
    ) -> Tensor:
        if self.rescale == 0:  # an affine combination: the same in every space
            return neg + self.scale * (pos - neg)
        p, n = to_space(self.space, pos, x, sigma), to_space(self.space, neg, x, sigma)
        g = n + self.scale * (p - n)
        ratio = p.flatten(1).std(1) / g.flatten(1).std(1).clamp_min(_TINY)
        factor = self.rescale * ratio.reshape(-1, *([1] * (g.ndim - 1))) + (1 - self.rescale)
        return from_space(self.space, factor * g, x, sigma)


@dataclass(frozen=True)
class APG:
    """Adaptive projected guidance (Sadat et al. 2024, Alg. 1): with delta = P - N, first the reverse
    momentum delta <- delta + beta delta_prev (``momentum`` beta, state of one trajectory), then
    delta <- delta min(1, r / ||delta||) (``norm_threshold`` r), then
    G = P + (w - 1) (delta_perp + eta delta_par), delta_par the projection of delta on P.
    With eta = 1, no threshold and no momentum, G is CFG; the paper works in x0 space."""

    scale: float
    eta: float = 0.0
    norm_threshold: float | None = None
    momentum: float = 0.0
    space: str = "x0"

    def __post_init__(self) -> None:
        _check_scale(self.scale)
        if not math.isfinite(self.eta):
            raise ValueError(f"APG eta must be finite, got {self.eta}")
        if self.norm_threshold is not None and not self.norm_threshold > 0:
            raise ValueError(f"APG norm_threshold must be > 0 (or None), got {self.norm_threshold}")
        if not -1 < self.momentum < 1:
            raise ValueError(f"APG momentum must be in (-1, 1), got {self.momentum}")
        _check_space(self.space)

    @property
    def identity(self) -> bool:
        return self.scale == 1

    def __call__(
        self, pos: Tensor, neg: Tensor, x: Tensor, sigma: Tensor, state: dict[str, Any]
    ) -> Tensor:
        p, n = to_space(self.space, pos, x, sigma), to_space(self.space, neg, x, sigma)
        delta = p - n
        if self.momentum:
            previous = state.get("apg_momentum")
            if previous is not None:
                delta = delta + self.momentum * previous
            state["apg_momentum"] = delta
        if self.norm_threshold is not None:
            norm = _dot(delta, delta).sqrt()
            delta = delta * torch.clamp(self.norm_threshold / norm.clamp_min(_TINY), max=1.0)
        parallel = _dot(delta, p) / _dot(p, p).clamp_min(_TINY) * p
        update = (delta - parallel) + self.eta * parallel
        return from_space(self.space, p + (self.scale - 1) * update, x, sigma)


@dataclass(frozen=True)
class CFGZeroStar:
    """CFG-Zero* (Fan et al. 2025): G = s* N + w (P - s* N) with the optimised scale
    s* = <P, N> / ||N||^2 per sample, and zero-init: G = 0 at noise levels sigma >= ``zero_init``
    (the grid's sigma_0 zeroes exactly the first step). Defined in velocity space, where G = 0 keeps
    the flow sample x_t where it is."""

    scale: float
    zero_init: float | None = None
    space: str = "velocity"

    def __post_init__(self) -> None:
        _check_scale(self.scale)
        if self.zero_init is not None and not self.zero_init >= 0:
            raise ValueError(
                f"CFG-Zero* zero_init must be a noise level >= 0, got {self.zero_init}"
            )
        _check_space(self.space)

    @property
    def identity(self) -> bool:
        return self.scale == 1 and self.zero_init is None

    def __call__(
        self, pos: Tensor, neg: Tensor, x: Tensor, sigma: Tensor, state: dict[str, Any]
    ) -> Tensor:
        p, n = to_space(self.space, pos, x, sigma), to_space(self.space, neg, x, sigma)
        s_star = _dot(p, n) / _dot(n, n).clamp_min(_TINY)
        g = s_star * n + self.scale * (p - s_star * n)
        if self.zero_init is not None:
            g = torch.where(sigma >= self.zero_init, 0.0, g)
        return from_space(self.space, g, x, sigma)


# the rule registry: name -> rule class, called as ``get(name)(scale, **options)``
_RULES: dict[str, type] = {"cfg": CFG, "apg": APG, "cfg_zero_star": CFGZeroStar}


def available() -> list[str]:
    """Names of the guidance rules (``difflab sample --guidance-method``): cfg, apg, cfg_zero_star."""
    return sorted(_RULES)


def get(name: str) -> type:
    """The rule class called ``name``: ``get("apg")(2.0)`` is ``APG(2.0)``; an unknown name is a
    ValueError listing the valid ones, nearest first."""
    if not isinstance(name, str) or name not in _RULES:
        raise unknown_name("guidance rule", name, _RULES)
    return _RULES[name]


def as_rule(rule: float | Rule) -> Rule:
    """A rule from a rule or a plain CFG scale."""
    if isinstance(rule, int | float) and not isinstance(rule, bool):
        return CFG(float(rule))
    if not callable(rule) or not hasattr(rule, "identity"):
        raise ValueError(
            f"guidance must be a scale or a rule (CFG, APG, CFGZeroStar), got {rule!r}"
        )
    return rule
