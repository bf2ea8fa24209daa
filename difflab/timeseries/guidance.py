"""Forecasting and imputation with an unconditional model of windows p(x0): observation
self-guidance and refinement by the model's implicit density (TSDiff; Kollovieh et al. 2023,
"Predict, Refine, Synthesize").

    paths = self_guided_sample(model, values, given, 50, loss="quantile", scale=4.0)
    better = refine(model, paths, values, given, method="lmc", steps=50)

Self-guidance. The score of p(x | y_obs) is grad log p(x) + grad log p(y_obs | x), and TSDiff takes
log p(y_obs | x) = -s L(y_obs, D(x, sigma)_obs) with the denoiser's estimate of x0 in place of x0:
L the squared error ("mse": y_obs ~ N(D_obs, I / 2s), s = 1 / 2 tau^2 for a noise std tau) or the
quantile loss max(q e, (q - 1) e), e = y - D, sample path i of S at level q_i = i / (S + 1)
("quantile": the paths spread like the quantiles of the forecast). Through Tweedie's formula
D = x + sigma^2 grad log p, the guided score is the denoiser

    D_s(x, sigma) = D(x, sigma) - s sigma^2 grad_x L(y_obs, D(x, sigma)_obs)   (:func:`self_guided`)

which is :func:`difflab.guidance.reward_guidance` with the reward -L at lambda = s, so any sampler
runs it on any grid. TSDiff's DDPM step adds s beta~_t grad(-L) to the VP state; in
x = x_vp / a that is the ancestral step of D_s up to the factor (sigma'^2 / sigma^2)
sqrt((1 + sigma^2) / (1 + sigma'^2)) -> 1 as the grid refines (0 on the last step, where
beta~ = 0): s is TSDiff's ``scale`` as it is. For "mse", -s L is restoration's Gaussian likelihood
``log_likelihood(Inpainting(m), y, D, (2 s)^-1/2)`` up to a constant. DPS
(:func:`difflab.restoration.dps`) is the same family (an ancestral step plus the gradient of the
squared residual through the denoiser) with another step rule: its update equals this one's DDPM
step at s_i = zeta sqrt((1 + sigma_i^2)(1 + sigma_i+1^2)) / (||r|| (sigma_i^2 - sigma_i+1^2)), per
step and per sample, so its constant zeta cannot express TSDiff's constant s.

Refinement. A forecast y (a baseline's, a guided sample) is improved under the energy

    E(y) = w ||D(y + sigma eps, sigma) - y||^2 / sigma^2 + s L(y_obs, values_obs),   eps ~ N(0, I)

drawn afresh at every iteration and the first term averaged over the antithetic pair +-eps (the
same expectation; the part of its gradient linear in eps cancels): TSDiff's, at one fixed sigma with
w = 1 (their eps-loss ||eps_theta - eps||^2 equals the first term), or, with sigma log-uniform on
[sigma_min, sigma_max] and w = ln(sigma_max / sigma_min), an unbiased estimate of
1/2 int E||D - y||^2 d(sigma^-2), the continuous-time ELBO (Kingma et al. 2021), which is
-log p(y) + const for the exact denoiser up to the cut ends (TSDiff's fixed sigma is not: on a
Gaussian its exp(-E) has at least twice the variance). "ml" descends it, y <- y - eta grad E
(TSDiff's most-likely refiner, plain SGD); "lmc" is Langevin Monte Carlo,
y <- y - eta grad E + sqrt(2 eta) gamma xi, whose stationary density is exp(-E / gamma^2)
(gamma = 1: the model's p(y | y_obs); TSDiff uses 0.1). s = inf holds the given entries at their
values: the exact conditional, the limit of the observation term (a model's s and L are in its
standardized units).

A :class:`TimeSeriesModel` is used through its unconditional denoiser (no mask: the network sees an
empty one; train it with ``masks.strategy = "none"``) on standardized values, in and out in the
data's units; any other denoiser D(x, sigma) of windows [B, L, K] runs on the tensors as they are.
Outputs keep the given entries at their values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from difflab import sampling
from difflab.guidance import reward_guidance
from difflab.sampling.noise import rand, randn
from difflab.timeseries.model import TimeSeriesModel
from difflab.utils.names import check_name, unknown_name

__all__ = [
    "GUIDED_STEPS",
    "LOSSES",
    "METHODS",
    "SCALES",
    "observation_loss",
    "quantile_levels",
    "refine",
    "self_guided",
    "self_guided_sample",
]

LOSSES = ("mse", "quantile")
METHODS = ("ml", "lmc")
# TSDiff guides DDPM (ancestral) steps. On the exact AR(1) forecast, 50 of them leave the variance
# of mean-square guided paths 5-13 % narrow, 20 of them 25-32 %; a deterministic sampler (dpmpp_2m,
# the models' default) doubles the error of the mean
GUIDED_STEPS = 50
# the scale s when none is given: on the exact AR(1) forecast, mean-square guidance's mean error is
# smallest near s = 1, and quantile guidance's 50 / 90 % intervals hold 51 / 90 % of the exact
# conditional's mass at s = 4 (TSDiff's quantile configs use 4 too)
SCALES = {"mse": 1.0, "quantile": 4.0}
Denoiser = Callable[..., Tensor]


def quantile_levels(samples: int) -> Tensor:
    """q_i = i / (S + 1), i = 1..S: the quantile level of each of S sample paths (Kollovieh et al.
    2023)."""
    return torch.arange(1, samples + 1, dtype=torch.float64) / (samples + 1)


def observation_loss(
    d: Tensor, values: Tensor, given: Tensor, loss: str = "mse", quantiles: Tensor | None = None
) -> Tensor:
    """[B]: sum over the given entries of e^2 ("mse") or max(q e, (q - 1) e) ("quantile", one level
    q per row), e = values - d (TSDiff's self-guidance losses, Kollovieh et al. 2023)."""
    e = torch.where(given, values.to(d.dtype) - d, 0.0)
    if loss == "mse":
        per_entry = e.square()
    elif loss == "quantile":
        if quantiles is None or quantiles.shape != (len(d),):
            raise ValueError(f"the quantile loss needs one level per row [{len(d)}]")
        q = quantiles.to(d).reshape(-1, *[1] * (d.ndim - 1))
        per_entry = torch.maximum(q * e, (q - 1) * e)
    else:
        raise unknown_name("self-guidance loss", loss, LOSSES)
    return per_entry.flatten(1).sum(1)


def self_guided(
    denoiser: Denoiser,
    values: Tensor,
    given: Tensor,
    *,
    loss: str = "mse",
    scale: float | None = None,
    quantiles: Tensor | None = None,
) -> Denoiser:
    """D_s(x, sigma) = D(x, sigma) - s sigma^2 grad_x L(y_obs, D(x, sigma)_obs) for windows
    [B, L, K] observed at ``given``, s by default :data:`SCALES`'s (module docstring; Kollovieh et
    al. 2023)."""
    check_name("self-guidance loss", loss, LOSSES)
    scale = SCALES[loss] if scale is None else scale
    _check_scale(scale)
    values = torch.where(given, values, 0.0)

    def reward(d: Tensor, **cond: Any) -> Tensor:
        return -observation_loss(d, values.to(d.device), given.to(d.device), loss, quantiles)

    return reward_guidance(denoiser, reward, scale)


def self_guided_sample(
    model: TimeSeriesModel | Denoiser,
    values: Tensor,
    given: Tensor,
    samples: int = 1,
    *,
    loss: str = "mse",
    scale: float | None = None,
    sigmas: Tensor | None = None,
    sampler: str = "ddpm",
    steps: int | None = None,
    schedule: str | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
) -> Tensor:
    """Paths [S, N, L, K] x0 = sampler(D_s, sigma_0 z, sigmas), z ~ N(0, I), of windows ``values``
    [N, L, K] observed at ``given`` by the self-guided unconditional denoiser (:func:`self_guided`;
    Kollovieh et al. 2023): TSDiff's DDPM steps unless ``sampler`` names another, on ``sigmas`` or
    (a model) its grid of ``steps`` (default 50), path i of S at quantile level i / (S + 1) for
    ``loss="quantile"``; ``scale`` by default :data:`SCALES`'s."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    check_name("self-guidance loss", loss, LOSSES)
    run = _Problem(model, values, given, samples)
    if sigmas is None:
        if run.model is None:
            raise ValueError("a bare denoiser needs sigmas (a grid ending in 0)")
        sigmas = run.model.grid(steps or GUIDED_STEPS, schedule)
    elif steps is not None or schedule is not None:
        raise ValueError("give sigmas or steps / schedule, not both")
    sample, start = sampling.get(sampler), float(sigmas[0])
    q = quantile_levels(samples).repeat_interleave(len(values)) if loss == "quantile" else None
    out = []
    for rows in run.batches(batch_size):
        v, m = run.values[rows], run.given[rows]
        guided = self_guided(
            run.denoiser, v, m, loss=loss, scale=scale, quantiles=None if q is None else q[rows]
        )
        z = randn(v.shape, generator, v.dtype, v.device)
        out.append(
            sample(guided, z * start if math.isfinite(start) else z, sigmas, generator=generator)
        )
    return run.result(torch.cat(out))


def refine(
    model: TimeSeriesModel | Denoiser,
    initial: Tensor,
    values: Tensor,
    given: Tensor,
    *,
    method: str = "lmc",
    steps: int = 100,
    step_size: float = 0.01,
    loss: str = "mse",
    scale: float = math.inf,
    sigma: float | tuple[float, float] = (0.02, 20.0),
    noise: float = 1.0,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
) -> Tensor:
    """Windows [S, N, L, K] refined from ``initial`` (observed at ``given`` with ``values``
    [N, L, K]) by ``steps`` iterations on E(y) = w ||D(y + sigma eps, sigma) - y||^2 / sigma^2
    + s L(y_obs, values_obs): "ml" y <- y - eta grad E, "lmc" y <- y - eta grad E + sqrt(2 eta)
    gamma xi; ``sigma`` fixed (TSDiff, w = 1) or a range (log-uniform, w = ln ratio: the ELBO);
    s = inf holds the given entries (module docstring; Kollovieh et al. 2023)."""
    check_name("refinement method", method, METHODS)
    check_name("refinement loss", loss, LOSSES)
    if initial.ndim != 4 or initial.shape[1:] != values.shape:
        raise ValueError(
            f"initial must be [S, {', '.join(map(str, values.shape))}] (paths of the windows), "
            f"got {list(initial.shape)}"
        )
    if steps < 0 or not step_size > 0 or not noise >= 0:
        raise ValueError(
            f"refinement needs steps >= 0, step_size > 0 and noise >= 0, got {steps}, "
            f"{step_size}, {noise}"
        )
    _check_scale(scale)
    levels = _noise_levels(sigma)
    samples = len(initial)
    run = _Problem(model, values, given, samples)
    start = run.standardize(initial.reshape(-1, *values.shape[1:]))
    q = quantile_levels(samples).repeat_interleave(len(values)) if loss == "quantile" else None
    noisy = method == "lmc" and noise > 0
    out = []
    for rows in run.batches(batch_size):
        v, m = run.values[rows], run.given[rows]
        y = torch.where(m, v, start[rows]) if math.isinf(scale) else start[rows]
        quantiles = None if q is None else q[rows]
        for _ in range(steps):
            grad = _energy_grad(run.denoiser, y, v, m, levels, loss, scale, quantiles, generator)
            y = y - step_size * grad
            if noisy:
                y = y + math.sqrt(2 * step_size) * noise * _randn(y, generator)
            if math.isinf(scale):
                y = torch.where(m, v, y)
        out.append(y)
    return run.result(torch.cat(out))


# ------------------------------------------------------------------------------------ helpers


def _check_scale(scale: float) -> None:
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale >= 0:
        raise ValueError(f"the guidance scale must be a number >= 0, got {scale!r}")


def _noise_levels(sigma: float | tuple[float, float]) -> tuple[float, float]:
    """(sigma_min, sigma_max) of the energy's noise levels (equal for a fixed sigma)."""
    lo, hi = (sigma, sigma) if isinstance(sigma, int | float) else tuple(sigma)
    if not 0 < lo <= hi < math.inf:
        raise ValueError(f"sigma must be a number > 0 or a range 0 < min <= max, got {sigma}")
    return float(lo), float(hi)


def _randn(like: Tensor, generator: torch.Generator | None) -> Tensor:
    return randn(like.shape, generator, like.dtype, like.device)


def _energy_grad(
    denoiser: Denoiser,
    y: Tensor,
    values: Tensor,
    given: Tensor,
    levels: tuple[float, float],
    loss: str,
    scale: float,
    quantiles: Tensor | None,
    generator: torch.Generator | None,
) -> Tensor:
    """grad_y E(y) for one draw of sigma and eps per row, the denoising term averaged over the
    antithetic pair +-eps (:func:`refine`)."""
    lo, hi = levels
    u = rand((len(y),), generator, y.dtype, y.device)
    sigma = lo * (hi / lo) ** u  # log-uniform; sigma_min when fixed
    weight = math.log(hi / lo) if hi > lo else 1.0
    eps = _randn(y, generator)
    s = sigma.reshape(-1, *[1] * (y.ndim - 1))
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        pair = denoiser(torch.cat([y + s * eps, y - s * eps]), torch.cat([sigma, sigma]))
        error = (pair - torch.cat([y, y])).square().flatten(1).sum(1)
        energy = weight * (error[: len(y)] + error[len(y) :]) / (2 * sigma**2)
        if not math.isinf(scale) and scale > 0:
            energy = energy + scale * observation_loss(y, values, given, loss, quantiles)
        (grad,) = torch.autograd.grad(energy.sum(), y)
    return grad


class _Problem:
    """The windows of one call, repeated per sample path (row i N + n: path i of window n), in the
    denoiser's units: standardized for a :class:`TimeSeriesModel` (its unconditional denoiser)."""

    def __init__(
        self, model: TimeSeriesModel | Denoiser, values: Tensor, given: Tensor, samples: int
    ) -> None:
        if values.ndim != 3 or given.shape != values.shape:
            raise ValueError(
                f"values and given must be windows [N, L, K] of one shape, got "
                f"{list(values.shape)} and {list(given.shape)}"
            )
        given = given.bool()
        if not bool(torch.isfinite(values[given]).all()):
            raise ValueError("the given values contain NaN or inf")
        self.shape, self.dtype, self.samples = values.shape, values.dtype, samples
        self.original_values, self.original_given = values, given
        self.model = model if isinstance(model, TimeSeriesModel) else None
        if self.model is None:
            if not callable(model):
                raise ValueError(f"expected a TimeSeriesModel or a denoiser, got {type(model)}")
            self.denoiser, device = model, values.device
        else:
            if self.model.prior is not None:
                raise ValueError(
                    "self-guidance and refinement need an unconditional model; this one diffuses "
                    "the residual around a prior forecast of its given context"
                )
            self.model._check(values, "values")
            self.denoiser = self.model.denoiser
            device = next(self.model.network.parameters()).device
        self.given = given.to(device).repeat(samples, 1, 1)
        self.values = torch.where(self.given, self.standardize(values.repeat(samples, 1, 1)), 0.0)

    def standardize(self, x: Tensor) -> Tensor:
        """x in the denoiser's units (float32 on the network's device for a model)."""
        if self.model is None:
            return torch.where(torch.isfinite(x), x, 0.0)
        device = next(self.model.network.parameters()).device
        x = torch.where(torch.isfinite(x), x, 0.0).to(device, torch.float32)
        return self.model.standardizer(x)

    def batches(self, size: int) -> list[slice]:
        return [slice(i, i + size) for i in range(0, len(self.values), size)]

    def result(self, x: Tensor) -> Tensor:
        """[S, N, L, K] in the data's units, the given entries at their values."""
        if self.model is not None:
            x = self.model.standardizer.unnormalize(x).cpu().to(self.dtype)
        x = x.reshape(self.samples, *self.shape)
        return torch.where(self.original_given, self.original_values.to(x.device), x)
