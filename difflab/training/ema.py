"""Exponential moving averages of network weights: constant decay and EDM2's power-function EMA."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from difflab.core.tensors import check_name

__all__ = ["EMA", "EMA_KINDS", "power_gamma", "power_sigma_rel"]

EMA_KINDS = ("constant", "power")


def power_sigma_rel(gamma: float) -> float:
    """sigma_rel = sqrt(gamma+1) / ((gamma+2) sqrt(gamma+3)), the relative width of the power EMA (Karras et al. 2024, eq. 3)."""
    return math.sqrt(gamma + 1) / ((gamma + 2) * math.sqrt(gamma + 3))


def power_gamma(sigma_rel: float) -> float:
    """The exponent gamma whose power EMA has relative width sigma_rel: the real root of
    gamma^3 + 7 gamma^2 + (16 - sigma_rel^-2) gamma + 12 - sigma_rel^-2 = 0 (Karras et al. 2024, Alg. 2)."""
    if not 0 < sigma_rel < power_sigma_rel(0.0):
        raise ValueError(f"sigma_rel must lie in (0, {power_sigma_rel(0.0):.4f}), got {sigma_rel}")
    s = sigma_rel**-2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


class EMA:
    """theta_ema <- beta theta_ema + (1 - beta) theta after each optimizer step.

    kind="constant": beta = min(decay, (1 + n) / (10 + n)) with n updates so far (warm-up as in
    Song et al. 2021's code); kind="power": beta_n = (1 - 1/n)^(gamma + 1), gamma from sigma_rel
    (EDM2 power-function EMA, Karras et al. 2024), which averages with weight proportional to t^gamma.
    Buffers (e.g. norm statistics) are copied, not averaged.
    """

    def __init__(
        self,
        model: nn.Module,
        kind: str = "power",
        decay: float = 0.999,
        sigma_rel: float = 0.05,
    ) -> None:
        check_name("EMA kind", kind, EMA_KINDS)
        if kind == "constant" and not 0 <= decay < 1:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.kind, self.decay, self.sigma_rel = kind, decay, sigma_rel
        self.gamma = power_gamma(sigma_rel) if kind == "power" else None
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._params = list(self.model.parameters())
        self._buffers = list(self.model.buffers())
        self.updates = 0

    def beta(self, n: int) -> float:
        """The weight kept from the average at the n-th update (n >= 1)."""
        if self.kind == "power":
            return (1 - 1 / n) ** (self.gamma + 1)
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` into the average."""
        self.updates += 1
        beta = self.beta(self.updates)
        torch._foreach_lerp_(self._params, [p.detach() for p in model.parameters()], 1 - beta)
        for b_ema, b in zip(self._buffers, model.buffers()):
            b_ema.copy_(b)

    def config(self) -> dict[str, Any]:
        """What rebuilds this EMA: kind and its parameter."""
        if self.kind == "power":
            return {"kind": "power", "sigma_rel": self.sigma_rel}
        return {"kind": "constant", "decay": self.decay}

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights, the number of updates and the kind (for checkpoints)."""
        return {"updates": self.updates, **self.config(), "model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(
                f"EMA state is of kind {state.get('kind')!r}, this EMA is {self.kind!r}"
            )
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
