"""Loss weightings lambda(sigma) on the x0-space error ||D(x, sigma) - x0||^2 (Kingma & Gao 2023,
"Understanding Diffusion Objectives"), with SNR = 1 / sigma^2 in the sigma_ve convention of DESIGN.md.

    uniform       : unit weight on the network's own output error (its prediction's native weight)
    snr           : lambda = SNR                       (the eps loss; Ho et al. 2020)
    min_snr       : lambda = min(SNR, gamma)           (Hang et al. 2023)
    edm           : lambda = (s^2 + sd^2) / (s sd)^2   (Karras et al. 2022)
    truncated_snr : lambda = max(SNR, 1)               (Salimans & Ho 2022)

Each weighting returns the pair (lambda, sigma^2 lambda): the weight on the x0 error and the same
weight on the eps error (||eps_hat - eps|| = ||x0_hat - x0|| / sigma), each written so that it is
exact at sigma = 0 and sigma = inf. The loss is computed on the network output with
lambda / g^2 = sigma^2 lambda / h^2 (g, h: d out / d x0_hat and d out / d eps_hat, see
:func:`difflab.training.objectives.output_slopes`), whichever of the two is defined.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from difflab.core.tensors import check_name

__all__ = ["WEIGHTINGS", "Weighting", "edm", "min_snr", "snr", "truncated_snr"]


def snr(sigma: Tensor) -> tuple[Tensor, Tensor]:
    """lambda = SNR = 1 / sigma^2: the eps-prediction loss (Ho et al. 2020; Kingma & Gao 2023)."""
    return sigma.square().reciprocal(), torch.ones_like(sigma)


def min_snr(sigma: Tensor, gamma: float = 5.0) -> tuple[Tensor, Tensor]:
    """lambda = min(SNR, gamma) (Hang et al. 2023, Min-SNR-gamma)."""
    s2 = sigma.square()
    return s2.reciprocal().clamp(max=gamma), (gamma * s2).clamp(max=1.0)


def edm(sigma: Tensor, sigma_data: float = 0.5) -> tuple[Tensor, Tensor]:
    """lambda = (sigma^2 + sd^2) / (sigma sd)^2 = 1/sigma^2 + 1/sd^2 (Karras et al. 2022, Table 1)."""
    s2, d2 = sigma.square(), sigma_data**2
    return s2.reciprocal() + 1 / d2, 1 + s2 / d2


def truncated_snr(sigma: Tensor) -> tuple[Tensor, Tensor]:
    """lambda = max(SNR, 1) (Salimans & Ho 2022, "truncated SNR" weighting)."""
    s2 = sigma.square()
    return s2.reciprocal().clamp(min=1.0), s2.clamp(min=1.0)


_WEIGHTS: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "snr": snr,
    "min_snr": min_snr,
    "edm": edm,
    "truncated_snr": truncated_snr,
}
WEIGHTINGS = ("uniform", *_WEIGHTS)


class Weighting:
    """A loss weighting lambda(sigma) on ||D - x0||^2 by name, e.g. ``Weighting("min_snr", gamma=5)``;
    "uniform" is each prediction type's native weight (Kingma & Gao 2023)."""

    def __init__(self, name: str = "uniform", **options: Any) -> None:
        valid = self.options_of(name)
        for key in options:
            if key not in valid:
                raise ValueError(
                    f"weighting {name!r} takes no option {key!r}; valid options: "
                    f"{', '.join(valid) or 'none'}"
                )
        self.name, self.options = name, {**valid, **options}

    @staticmethod
    def options_of(name: str) -> dict[str, Any]:
        """The options (with defaults) that the named weighting accepts."""
        check_name("weighting", name, WEIGHTINGS)
        if name == "uniform":
            return {}
        params = inspect.signature(_WEIGHTS[name]).parameters.values()
        return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}

    def __call__(self, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """(lambda, sigma^2 lambda) at sigma_ve; "uniform" has no prediction-free lambda."""
        if self.name == "uniform":
            raise ValueError(
                "the 'uniform' weighting is the prediction type's native weight: use output_weight"
            )
        return _WEIGHTS[self.name](sigma, **self.options)

    def output_weight(self, sigma: Tensor, slope_x0: Tensor, slope_eps: Tensor) -> Tensor:
        """lambda / g^2, the weight on ||out - target||^2 that makes it lambda ||x0_hat - x0||^2, for
        g = d out / d x0_hat and h = d out / d eps_hat = -sigma g (sigma broadcast against them);
        where lambda / g^2 is 0/0 or inf/inf (sigma = 0 or inf) it is sigma^2 lambda / h^2."""
        if self.name == "uniform":
            return torch.ones_like(sigma)
        lam, lam_eps = self(sigma)
        weight = lam / slope_x0.square()
        return torch.where(torch.isnan(weight), lam_eps / slope_eps.square(), weight)

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able description."""
        return {"name": self.name, **self.options}

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"Weighting({self.name!r}{args})"
