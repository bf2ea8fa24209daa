"""Masking schedules of absorbing-state (masked) diffusion: alpha_t = P(token still unmasked at t).
(Step grids, the other kind of schedule, are :mod:`difflab.schedules`; a masking schedule is a
:class:`Masking` here, named by the text config's ``objective.schedule`` and a text model's
``"schedule"``.)

q(z_t | x) = Cat(alpha_t x + (1 - alpha_t) m) per token, t in [0, 1], alpha_0 = 1 (Austin et al. 2021;
Sahoo et al. 2024; Shi et al. 2024). Every schedule gives the same continuous-time ELBO when the
network is time-agnostic (the ELBO is an integral over the mask rate 1 - alpha_t, Shi et al. 2024,
Sec. 4); the schedule sets where training samples the mask rate and the step spacing of samplers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from difflab.core.tensors import unknown_name

__all__ = ["MASKINGS", "Masking", "get"]

MASKINGS = ("linear", "cosine", "log_linear")


@dataclass(frozen=True)
class Masking:
    """alpha(t), its derivative alpha'(t) and inverse t(alpha) for one named schedule.

    linear: alpha = 1 - t (D3PM's absorbing schedule in continuous time, Austin et al. 2021);
    cosine: alpha = 1 - cos(pi/2 (1 - t)), the masked fraction cos(pi r / 2) of MaskGIT at progress
    r = 1 - t (Chang et al. 2022; Shi et al. 2024); log_linear: alpha = 1 - (1 - eps) t, i.e. total
    noise sigma(t) = -log(1 - (1 - eps) t) (MDLM's default, Sahoo et al. 2024), which keeps
    alpha_1 = eps > 0.
    """

    name: str = "linear"
    eps: float = 1e-3

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or self.name not in MASKINGS:
            raise unknown_name("masking schedule", self.name, MASKINGS)
        if not 0 < self.eps < 1:
            raise ValueError(f"log_linear eps must lie in (0, 1), got {self.eps}")

    def alpha(self, t: Tensor) -> Tensor:
        """alpha_t, the probability that a token is still unmasked at time t."""
        if self.name == "linear":
            return 1 - t
        if self.name == "cosine":
            return 1 - torch.sin(math.pi / 2 * t)  # = 1 - cos(pi/2 (1 - t)), exact at t = 0 and 1
        return 1 - (1 - self.eps) * t

    def dalpha(self, t: Tensor) -> Tensor:
        """alpha'_t = d alpha_t / dt (<= 0)."""
        if self.name == "linear":
            return -torch.ones_like(t)
        if self.name == "cosine":
            return -math.pi / 2 * torch.cos(math.pi / 2 * t)
        return torch.full_like(t, -(1 - self.eps))

    def t_of(self, alpha: Tensor) -> Tensor:
        """The time t at which alpha_t = alpha (the inverse of :meth:`alpha`)."""
        if self.name == "linear":
            return 1 - alpha
        if self.name == "cosine":
            return 2 / math.pi * torch.asin((1 - alpha).clamp(0, 1))
        return (1 - alpha) / (1 - self.eps)

    def weight(self, t: Tensor) -> Tensor:
        """-alpha'_t / (1 - alpha_t), the ELBO's weight on the masked tokens' cross-entropy at t."""
        return -self.dalpha(t) / (1 - self.alpha(t))


def get(masking: str | Masking) -> Masking:
    """A masking schedule by name ("linear", "cosine", "log_linear"), or the masking itself."""
    if isinstance(masking, Masking):
        return masking
    if not isinstance(masking, str) or masking not in MASKINGS:
        raise unknown_name("masking schedule", masking, MASKINGS)
    return Masking(masking)
