"""Diffusion-DPO: direct preference optimization of a diffusion model on pairs (x_w, x_l), with the
frozen base model as the reference (Wallace et al. 2023; Rafailov et al. 2023).

DPO's loss -log sigmoid(beta log p_theta(x_w) / p_ref(x_w) - beta log p_theta(x_l) / p_ref(x_l))
on whole chains, with each chain's log-likelihood ratio replaced by the difference of the models'
continuous-time ELBOs (Kingma et al. 2021): for sigma ~ log-uniform on [sigma_min, sigma_max] and
x_sigma = x0 + sigma eps,

    log p_theta(x0) - log p_ref(x0) ~ -T w(sigma) (||eps - eps_theta(x_sigma)||^2 - ||eps - eps_ref(x_sigma)||^2),

T w(sigma) = log(sigma_max / sigma_min) (the ELBO's density sigma^-3 ||x0 - D||^2 d sigma over the
draw's density), the squared norms summed over elements. So

    L = -log sigmoid(-beta T w(sigma) [(e_theta(x_w) - e_ref(x_w)) - (e_theta(x_l) - e_ref(x_l))])

with one sigma and eps shared by the pair (Wallace et al. 2023's final loss, as their code), and
beta is the KL coefficient of :func:`difflab.testing.tilted`: with Bradley-Terry labels
P(x_1 wins) = sigmoid(r(x_1) - r(x_2)) the optimum is p exp(r / beta) / Z. The official code's
``--beta_dpo`` multiplies -1/2 the per-element mean squared errors, so beta_dpo = 2 beta T w D for
D elements. Labels must be drawn, not ranked: a deterministic ranking (the winner always the higher
reward) has another optimum.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bradley_terry", "diffusion_dpo_loss", "elbo_weight", "log_uniform"]


def bradley_terry(r1: Tensor, r2: Tensor, generator: torch.Generator) -> Tensor:
    """[B] bool: whether x_1 wins, drawn with P(x_1 > x_2) = sigmoid(r(x_1) - r(x_2)) (Bradley &
    Terry 1952)."""
    p = torch.sigmoid((r1 - r2).detach().to(torch.float64)).cpu()
    return torch.rand(p.shape, generator=generator, dtype=torch.float64) < p


def log_uniform(n: int, sigma_min: float, sigma_max: float, generator: torch.Generator) -> Tensor:
    """[n] float64 sigma with log sigma ~ U[log sigma_min, log sigma_max]."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return sigma_min * (sigma_max / sigma_min) ** u


def elbo_weight(sigma_min: float, sigma_max: float) -> float:
    """T w(sigma) = log(sigma_max / sigma_min): with log-uniform sigma, E[T w ||eps - eps_hat||^2] is
    the continuous-time ELBO's int sigma^-3 ||x0 - D||^2 d sigma (Kingma et al. 2021, continuous time)."""
    return math.log(sigma_max / sigma_min)


def diffusion_dpo_loss(
    error_w: Tensor,
    ref_error_w: Tensor,
    error_l: Tensor,
    ref_error_l: Tensor,
    beta: float,
    weight: float,
) -> Tensor:
    """[B] -log sigmoid(-beta T w [(e_theta(x_w) - e_ref(x_w)) - (e_theta(x_l) - e_ref(x_l))]),
    e = ||eps - eps_hat||^2 summed over elements; log 2 when theta = ref (Wallace et al. 2023)."""
    inside = -beta * weight * ((error_w - ref_error_w) - (error_l - ref_error_l))
    return -F.logsigmoid(inside)
