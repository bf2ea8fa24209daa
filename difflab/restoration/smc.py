"""Twisted sequential Monte Carlo for p(x0 | y) (Wu, Trippe, Naesseth, Blei & Cunningham 2023,
"Practical and Asymptotically Exact Conditional Sampling in Diffusion Models", TDS), with PiGDM's
Gaussian p~(y | x) as the twist: asymptotically exact as the number of particles grows, with
systematic resampling when the effective sample size drops and an ESS report per step.

Target: the model's own reverse chain, x_0 = sigma_0 eps, DDPM steps p(x' | x) (ancestral DDIM,
eta = 1) down to the last level sigma_1 > 0, then x0 ~ N(D(x_1), r_1^2 I), reweighted by p(y | x0).
Particles move by the guided proposal and carry the weights

    q(x' | x)   = N(x'; mu + (sigma^2 - sigma'^2) grad_x log p~_sigma(y | x), v)    (mu, v: DDPM's)
    w(x, x')    = p(x' | x) p~_sigma'(y | x') / (q(x' | x) p~_sigma(y | x))          (w_0 = p~_sigma_0(y | x_0))

The last step draws x0 from N(D(x_1), r_1^2 I) conditioned on y exactly: its normalizer is
p~_sigma_1(y | x_1), so its weight is 1, and with noise_std = 0 the samples meet y exactly. A callable
A has no such closed form; its chain ends with x0 = D(x_1), weighted by p(y | x0) / p~_sigma_1(y | x_1)
(Wu et al.'s last step). The twist only steers: whatever its error, the weighted particles converge to
the target as particles grow (Wu et al. 2023, Thm. 1), and the product of mean weights is an unbiased
estimate of the chain's p(y). The chain itself is first order in the step size (docs/inverse.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from difflab.restoration.likelihood import condition, log_likelihood, posterior_variance
from difflab.restoration.measurement import Measurement, takes_measurement
from difflab.restoration.steps import checked_grid, denoise_at, value_and_grad
from difflab.sampling.registry import Callback, noise_source
from difflab.sampling.samplers.stochastic import ancestral_split
from difflab.sampling.steps import ddim_step

__all__ = ["SMCResult", "effective_sample_size", "smc", "systematic_resample"]


@dataclass(frozen=True)
class SMCResult:
    """Posterior samples x [G K, ...] (group g = rows g K .. g K + K - 1, equally weighted: every
    group resamples at the last level, and a linear A's last step has weight 1), the effective sample size
    after each level's reweighting, before resampling ([steps, G], in particles), whether each group
    resampled there ([steps, G]), and the estimate of log p(y) per group [G]."""

    x: Tensor
    ess: Tensor
    resampled: Tensor
    log_evidence: Tensor


def effective_sample_size(log_weights: Tensor) -> Tensor:
    """ESS = (sum w)^2 / sum w^2 per row of unnormalized log-weights [G, K]."""
    return torch.exp(2 * torch.logsumexp(log_weights, -1) - torch.logsumexp(2 * log_weights, -1))


def systematic_resample(log_weights: Tensor, u: Tensor) -> Tensor:
    """Systematic resampling (Carpenter, Clifford & Fearnhead 1999): indices [G, K] of the particles
    whose normalized-weight CDF holds (u_g + k) / K, k = 0..K-1, for one uniform u_g per row."""
    k = log_weights.shape[-1]
    cdf = torch.softmax(log_weights, -1).cumsum(-1)
    positions = (u[:, None] + torch.arange(k, dtype=cdf.dtype, device=cdf.device)) / k
    return torch.searchsorted(cdf, positions.to(cdf.dtype)).clamp(max=k - 1)


def _uniforms(
    groups: int, particles: int, generator: torch.Generator | Sequence[torch.Generator] | None
) -> Tensor:
    """One U(0, 1) per group; with one generator per particle, group g draws from its first one."""
    if generator is None or isinstance(generator, torch.Generator):
        dev = generator.device if generator is not None else "cpu"
        return torch.rand(groups, generator=generator, dtype=torch.float64, device=dev)
    return torch.stack(
        [
            torch.rand((), generator=generator[g * particles], dtype=torch.float64)
            for g in range(groups)
        ]
    )


@takes_measurement
def smc(
    denoiser: Callable[..., Tensor],
    measurement: Measurement,
    x: Tensor,
    sigmas: Tensor | Sequence[float],
    *,
    particles: int,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    callback: Callback | None = None,
    cond: dict[str, Any] | None = None,
    ess_threshold: float = 0.5,
    data_std: float = 1.0,
) -> SMCResult:
    """Twisted SMC (module docstring) with ``particles`` = K particles per measurement: x [G K, ...]
    (the start noise), y [G, ...], one row per group; per-sample ``cond`` must be the same within a
    group. A group resamples (systematically) when its ESS falls below ``ess_threshold`` K, and always
    at the last level. The twist is N(y; A D, noise_std^2 I + r^2 A A^T) for a LinearOperator
    (r^2 = sigma^2 c^2 / (sigma^2 + c^2), c = ``data_std``) and N(y; A(D), (noise_std^2 + r^2) I)
    for a callable A, whose last step is x0 = D(x_1), weighted by p(y | x0) / p~(y | x_1) before
    the final resampling. NFE = steps, each with one backward pass.
    """
    if not (isinstance(particles, int) and particles >= 1):
        raise ValueError(f"particles must be a positive integer, got {particles!r}")
    if len(x) % particles:
        raise ValueError(f"x holds {len(x)} rows, not a multiple of particles = {particles}")
    if not 0 <= ess_threshold <= 1:
        raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold}")
    posterior_variance(1.0, data_std)  # validates data_std
    k, groups = particles, len(x) // particles
    grid = checked_grid(denoiser, measurement, x, sigmas, cond, callback, groups)
    noise = noise_source(x, generator)
    operator, noise_std, linear = measurement.operator, measurement.noise_std, measurement.linear
    y_all = measurement.y.repeat_interleave(k, 0)

    def r2(i: int) -> float:
        return float(posterior_variance(grid[i], data_std))

    def twist(x: Tensor, i: int) -> tuple[Tensor, Tensor, Tensor]:
        """(D(x), log p~_sigma_i(y | x), its gradient in x)."""
        return value_and_grad(
            denoise_at(grid, i), x, lambda d: log_likelihood(operator, y_all, d, noise_std, r2(i))
        )

    d, ell, g = twist(x, 0)
    log_w = ell.view(groups, k)
    log_z = torch.zeros(groups, dtype=log_w.dtype, device=log_w.device)
    offsets = (torch.arange(groups, device=x.device) * k)[:, None]
    keep = torch.arange(k, device=x.device).expand(groups, k)
    ess_trace, resampled_trace = [], []
    for i in range(grid.steps):
        s, nxt = grid[i], grid[i + 1]
        if callback is not None:
            callback(i, s, x, d)
        last = nxt == 0
        if last and not linear:  # x0 = D(x_1), reweighted from the twist to p(y | x0)
            x = d
            log_w = log_w + (log_likelihood(operator, y_all, d, noise_std) - ell).view(groups, k)
        ess = effective_sample_size(log_w)
        resample = (ess < ess_threshold * k) | last
        ess_trace.append(ess)
        resampled_trace.append(resample)
        if bool(resample.any()):
            log_z = log_z + torch.where(resample, torch.logsumexp(log_w, -1) - math.log(k), 0.0)
            u = _uniforms(groups, k, generator).to(log_w.device)
            idx = torch.where(resample[:, None], systematic_resample(log_w, u), keep)
            rows = (idx + offsets).flatten()
            x, d, ell, g = x[rows], d[rows], ell[rows], g[rows]
            log_w = torch.where(resample[:, None], 0.0, log_w)
        if last:
            if linear:
                x = condition(operator, y_all, d, noise_std, r2(i), noise())
            break
        down, up = ancestral_split(s, nxt, 1.0)
        shift = (s * s - nxt * nxt) * g
        z = noise()
        x = ddim_step(x, d, s, down) + shift + up * z
        d, ell_next, g = twist(x, i + 1)
        # log N(x'; mu, v) - log N(x'; mu + shift, v) with x' - mu - shift = up z
        log_p_over_q = -(z * shift).flatten(1).sum(1) / up - shift.flatten(1).square().sum(1) / (
            2 * up * up
        )
        log_w = log_w + (log_p_over_q + ell_next - ell).view(groups, k)
        ell = ell_next
    return SMCResult(
        x=x,
        ess=torch.stack(ess_trace),
        resampled=torch.stack(resampled_trace),
        log_evidence=log_z,
    )
