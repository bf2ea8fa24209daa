"""Stochastic samplers: DDIM(eta) / DDPM / Euler ancestral, EDM's churned Heun, Restart, ER-SDE and
SA-Solver, all in x = x0 + sigma eps coordinates.

Fresh noise comes from the registry's ``noise(sigma, sigma_next)`` (one generator per sample makes
a sample independent of its batch; DDIM(eta), ER-SDE and SA-Solver also take ``noise="brownian"``,
the increments of one Brownian path per sample, see difflab.sampling.noise); DDIM(eta), ER-SDE and
SA-Solver add it through their Gaussian transition ``step(i, mean, std)``
(difflab.sampling.transitions), which also gives their trajectories' log-probabilities. Every
coefficient is a host float computed from the grid. The last
interval into sigma = 0 is the deterministic ``final_step`` (option ``final``, "tau" by default) and
adds no noise: from x ~ p_{sigma_1} it is an O(sigma_1^4) push-forward along the probability flow,
where the posterior-mean jump "denoised" (k-diffusion's and diffusers' rule) is only O(sigma_1^2)
(measured on the ring mixture: DDIM(eta = 1) at 96-192 steps is 0.02-0.09 nats from exact samples'
log-likelihood with "tau", 0.16-0.22 with "denoised").

The registry's ``order`` of a stochastic sampler is the order of its deterministic limit (noise
off), measured against the exact flow in the tests; with noise on, the samplers converge in
distribution (mean log-likelihood and sliced-W2 against exact samples, also tested).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import Tensor

from difflab.core.grids import karras
from difflab.sampling.noise import NOISES, Noise
from difflab.sampling.registry import SamplerGrid, register
from difflab.sampling.steps import check_final, combine, ddim_step, final_step, heun_step
from difflab.sampling.transitions import Step

__all__ = ["ancestral_split", "er_sde_noise_scaler", "stochastic_adams_coefficients"]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


# ---------------------------------------------------------------------------------- ancestral


def ancestral_split(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step, sigma_down^2 + sigma_up^2 = s'^2:
    sigma_up = min(s', eta s' sqrt(1 - s'^2/s^2)) (k-diffusion's get_ancestral_step, written without
    cancellation). eta = 1 is the DDPM posterior q(x' | x, x0): sigma_down = s'^2/s."""
    if eta == 0 or sigma_next == 0:
        return sigma_next, 0.0
    r2 = (sigma_next / sigma) ** 2
    up = sigma_next * min(1.0, eta * math.sqrt(1.0 - r2))
    down = sigma_next * math.sqrt(max(0.0, (1.0 - eta * eta) + eta * eta * r2))
    return down, up


@register(
    "ddim_eta",
    order=1,
    nfe=lambda n, **_: n,
    stochastic=True,
    aliases=("ddpm", "euler_ancestral"),
    noises=NOISES,
)
def ddim_eta(
    grid: SamplerGrid,
    x: Tensor,
    *,
    step: Step,
    eta: float = 1.0,
    s_noise: float = 1.0,
    final: str = "tau",
) -> Tensor:
    """DDIM(eta): x' = D + (s_down/s)(x - D) + s_up z (Song et al. 2021; eta = 1: Ho et al. 2020).

    (s_down, s_up) = ancestral_split(s, s', eta). One update, three names. DDPM's ancestral step
    is the exact posterior q(x_{t-1} | x_t, x0 = D); in these coordinates its mean is
    D + (s'^2/s^2)(x - D) and its variance s'^2 (s^2 - s'^2)/s^2 for any VP (or VE) process: DDIM
    at eta = 1, so ``ddpm`` is an alias. k-diffusion's Euler ancestral steps Euler to s_down, then
    adds s_up z; Euler from s to s_down is x + (s_down - s)(x - D)/s = D + (s_down/s)(x - D), the
    same update, so ``euler_ancestral`` is an alias too (``s_noise`` scales z as in k-diffusion).
    Both are checked with the same noise against diffusers' DDPMScheduler and k-diffusion's
    sample_euler_ancestral. eta = 0 is ``euler``; eta > 1 clamps s_up at s'. NFE = n.
    """
    _check(eta >= 0, f"eta must be >= 0, got {eta}")
    check_final(final)
    for i in range(grid.steps):
        s, nxt = grid[i], grid[i + 1]
        denoised = grid.denoise(x, i)
        if nxt == 0:
            return final_step(x, denoised, final, s)
        down, up = ancestral_split(s, nxt, eta)
        x, _ = step(i, ddim_step(x, denoised, s, down), up * s_noise)
    return x


# ---------------------------------------------------------------------------------- EDM, Restart


@register("edm", order=2, nfe=lambda n, **_: 2 * n - 1, stochastic=True)
def edm(
    grid: SamplerGrid,
    x: Tensor,
    *,
    noise: Noise,
    s_churn: float = 40.0,
    s_tmin: float = 0.05,
    s_tmax: float = 50.0,
    s_noise: float = 1.0,
    final: str = "tau",
) -> Tensor:
    """EDM: churn s -> s(1 + gamma) with fresh noise, then a Heun step (Karras et al. 2022, Alg. 2).

    gamma = min(s_churn/n, sqrt 2 - 1) where s_tmin <= s <= s_tmax, else 0. Defaults are the
    paper's ImageNet-64 settings (S_churn 40, S_tmin 0.05, S_tmax 50, in sigma units of data with
    std 0.5) except s_noise = 1: the paper's 1.003 compensates a trained network's errors and
    biases an exact denoiser. Option names follow k-diffusion's sample_heun. s_churn = 0 is
    ``heun`` exactly. The last step into 0 is ``final_step`` from the churned level (Alg. 2 takes
    an Euler step there). NFE = 2n - 1. A churned step starts off the grid, so the callback sees
    only the steps without churn.
    """
    _check(s_churn >= 0, f"s_churn must be >= 0, got {s_churn}")
    check_final(final)
    gamma = min(s_churn / grid.steps, math.sqrt(2) - 1)
    for i in range(grid.steps):
        s, nxt = grid[i], grid[i + 1]
        if gamma > 0 and s_tmin <= s <= s_tmax:
            x = x + (s_noise * s * math.sqrt(gamma * (2 + gamma))) * noise()  # to s(1 + gamma)
            s = s * (1 + gamma)
            denoised = grid.denoise(x, i, sigma=s)
        else:
            denoised = grid.denoise(x, i)
        if nxt == 0:
            return final_step(x, denoised, final, s)
        x = heun_step(x, denoised, s, nxt, functools.partial(grid.denoise, i=i + 1, stage=True))
    return x


def _restart_nfe(n: int, restart_k: int = 2, restart_steps: int = 2, **_: Any) -> int:
    return 2 * n - 1 + (2 * restart_k * restart_steps if n >= 2 else 0)


@register("restart", order=2, nfe=_restart_nfe, stochastic=True)
def restart(
    grid: SamplerGrid,
    x: Tensor,
    *,
    noise: Noise,
    restart_min: float = 0.06,
    restart_max: float = 0.30,
    restart_k: int = 2,
    restart_steps: int = 2,
    s_noise: float = 1.0,
    final: str = "tau",
) -> Tensor:
    """Restart: Heun, plus K cycles of noise up to t_max and Heun back to t_min (Xu et al. 2023).

    Heun on the grid; after the level t_min nearest ``restart_min``, ``restart_k`` = K times: add
    noise from t_min up to t_max = ``restart_max``, then Heun back down on ``restart_steps`` Karras
    levels (the paper's Alg. 2). Defaults: the paper's EDM / VP configuration for CIFAR-10 at small
    NFE ({"0": [3, 2, 0.06, 0.30]}: 3 levels = 2 Heun steps, K = 2; NFE 43 with 18 main steps).

    t_min is the positive grid level (after the first) nearest restart_min in log sigma (the
    official code snaps t_min to the nearest level too). When that level already lies at or above
    restart_max, t_max = t_min * restart_max / restart_min instead, so every grid of n >= 2 steps
    restarts once and the count depends on n alone. Inner levels are Karras (rho = 7) as in the
    official code; its optional churn inside the restart (restart_gamma) is not applied. Inner
    steps are off the grid (no callback). NFE = 2n - 1 + 2 K restart_steps for n >= 2 (grids
    ending in 0), 1 for n = 1. restart_k = 0 is ``heun`` exactly.
    """
    _check(0 < restart_min < restart_max, "need 0 < restart_min < restart_max")
    _check(restart_k >= 0 and restart_steps >= 1, "need restart_k >= 0 and restart_steps >= 1")
    check_final(final)
    positive = [j for j in range(1, grid.steps + 1) if grid[j] > 0]
    at = min(positive, key=lambda j: abs(math.log(grid[j] / restart_min)), default=None)
    for i in range(grid.steps):
        s, nxt = grid[i], grid[i + 1]
        denoised = grid.denoise(x, i)
        if nxt == 0:
            return final_step(x, denoised, final, s)
        x = heun_step(x, denoised, s, nxt, functools.partial(grid.denoise, i=i + 1, stage=True))
        if i + 1 == at and restart_k > 0:
            top = restart_max if nxt < restart_max else nxt * restart_max / restart_min
            levels = karras(restart_steps + 1, nxt, top, append_zero=False).tolist()
            for _ in range(restart_k):
                x = x + (s_noise * math.sqrt(top * top - nxt * nxt)) * noise()
                for a, b in itertools.pairwise(levels):
                    d = grid.denoise(x, i, sigma=a)
                    x = heun_step(x, d, a, b, functools.partial(grid.denoise, i=i, sigma=b))
    return x


# ---------------------------------------------------------------------------------- ER-SDE


def er_sde_noise_scaler(sigma: float) -> float:
    """ER-SDE's default noise scale phi(sigma) = sigma (exp(sigma^0.3) + 10) (Cui et al. 2023: the
    official code's SDE_5 and ComfyUI's sample_er_sde)."""
    return sigma * (math.exp(min(sigma**0.3, 700.0)) + 10.0)


@functools.cache
def _gauss_legendre(n: int = 24) -> tuple[tuple[float, ...], tuple[float, ...]]:
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return tuple(nodes.tolist()), tuple(weights.tolist())


def _er_sde_integrals(phi: Callable[[float], float], s: float, t: float) -> tuple[float, float]:
    """c_k = phi(t) int_t^s (sig - s)^(k-1) (1/phi(sig) - 1/phi(t)) dsig, k = 1, 2: the weights of
    D' and D'' in the ER-SDE step (by parts from phi(t) int phi'/phi^2 (sig - s)^k / k!), by
    24-point Gauss-Legendre in log sigma, where the integrand is smooth for the default phi."""
    nodes, weights = _gauss_legendre()
    lo, hi = math.log(t), math.log(s)
    mid, half = (hi + lo) / 2, (hi - lo) / 2
    pt = phi(t)
    c1 = c2 = 0.0
    for u, w in zip(nodes, weights):
        sig = math.exp(mid + half * u)
        f = w * half * sig * (pt / phi(sig) - 1.0)
        c1 += f
        c2 += f * (sig - s)
    return c1, c2


@register("er_sde", order=3, nfe=lambda n, **_: n, stochastic=True, noises=NOISES)
def er_sde(
    grid: SamplerGrid,
    x: Tensor,
    *,
    step: Step,
    max_stage: int = 3,
    noise_scaler: Callable[[float], float] | None = None,
    s_noise: float = 1.0,
    final: str = "tau",
) -> Tensor:
    """ER-SDE-Solver-3: x' = r x + (1 - r) D + c1 D' + c2 D'' + noise (Cui et al. 2023).

    r = phi(s')/phi(s), noise sqrt(s'^2 - s^2 r^2) z ("Elucidating the solution space of extended
    reverse-time SDE for diffusion models").

    phi = ``noise_scaler``, a float -> float function; default ``er_sde_noise_scaler``, the
    paper's sigma (exp(sigma^0.3) + 10). phi(sigma) = sigma is the probability-flow ODE (no noise),
    phi(sigma) = sigma^2 the DDPM reverse SDE; phi(sigma)/sigma must not decrease (noise variance
    >= 0). c1, c2 are the integrals of phi's kernel against the Taylor terms, by Gauss-Legendre on
    the host to rounding (the official code sums 100 rectangles, ComfyUI 200 in float32).

    D', D'' are divided differences of the last three denoised values in sigma, as in the paper,
    with one correction where the math decides: the paper's D' = (D_i - D_{i-1})/(s_i - s_{i-1}) is
    the derivative at the midpoint, only first-order accurate at s_i, which caps stage 3 at second
    order (measured 2.1 against the exact flow); here D' gains (s_i - s_{i-1})/2 D'', which makes
    stage 3 third order (measured 3.0; errors 6-12x smaller at 32-128 steps). Start-up: stage
    min(max_stage, i + 1) at step i = 0, 1, ...; the first (Euler) step's O(h^2) error has a small
    constant when sigma_0 is large (D barely moves there). NFE = n.
    """
    _check(max_stage in (1, 2, 3), f"max_stage must be 1, 2 or 3, got {max_stage}")
    check_final(final)
    table = _er_sde_table(noise_scaler or er_sde_noise_scaler, tuple(grid.sigmas), max_stage)
    history: list[Tensor] = []  # D of the last two steps, newest first
    for i in range(grid.steps):
        denoised = grid.denoise(x, i)
        if grid[i + 1] == 0:
            return final_step(x, denoised, final, grid[i])
        r, std, weights = table[i]
        mean = denoised + r * (x - denoised)  # ddim_step's form: phi = sigma is euler op for op
        for w, d in zip(weights, [denoised, *history]):
            mean.add_(d, alpha=w)
        x, _ = step(i, mean, s_noise * std, fused=True)
        history = [denoised, *history][: max_stage - 1]
    return x


@functools.lru_cache(maxsize=256)
def _er_sde_table(
    phi: Callable[[float], float], sigmas: tuple[float, ...], max_stage: int
) -> tuple[tuple[float, float, tuple[float, ...]], ...]:
    """Per step but a final one into 0: (r, noise std, weights on D, D_1, D_2), once per grid.

    x' = D + r (x - D) + c1 D' + (c1 (s - s_1)/2 + c2) D'' with D' = (D - D_1)/(s - s_1) and
    D'' = (D' - (D_1 - D_2)/(s_1 - s_2)) / ((s - s_2)/2): the last two terms are linear in
    (D, D_1, D_2), with these weights (none at stage 1)."""
    table = []
    for i in range(len(sigmas) - 1 - (sigmas[-1] == 0)):
        s, nxt = sigmas[i], sigmas[i + 1]
        r = phi(nxt) / phi(s)
        var = nxt * nxt - (s * r) ** 2
        _check(var > -1e-12 * nxt * nxt, "noise_scaler must make phi(sigma)/sigma non-decreasing")
        weights = [0.0, 0.0, 0.0]
        stage = min(max_stage, i + 1)
        if stage >= 2:
            c1, c2 = _er_sde_integrals(phi, s, nxt)
            a = 1 / (s - sigmas[i - 1])  # D' = a (D - D_1)
            weights[0] += c1 * a
            weights[1] -= c1 * a
            if stage == 3:
                k = c1 * (s - sigmas[i - 1]) / 2 + c2
                b = 1 / (sigmas[i - 1] - sigmas[i - 2])  # D'_1 = b (D_1 - D_2)
                q = k * 2 / (s - sigmas[i - 2])  # k D'' = q (D' - D'_1)
                weights[0] += q * a
                weights[1] -= q * (a + b)
                weights[2] += q * b
        table.append((r, math.sqrt(max(var, 0.0)), tuple(weights[: stage if stage > 1 else 0])))
    return tuple(table)


# ---------------------------------------------------------------------------------- SA-Solver


def _exp_moments(c: float, count: int) -> list[float]:
    """m_p = int_{-1}^0 c e^(c v) v^p dv, p < count, for c > 0: a series for c < 1, else the stable
    upward recursion J_p = (p/c) J_{p-1} - e^-c of J_p = (-1)^p m_p."""
    if c < 1.0:
        out = []
        for p in range(count):
            term, total, k = 1.0, 0.0, 0
            while True:  # c sum_k (-c)^k / (k! (p + k + 1))
                add = term / (p + k + 1)
                total += add
                k += 1
                term *= -c / k
                if abs(add) < 1e-18 * abs(total):
                    break
            out.append((-1) ** p * c * total)
        return out
    e = math.exp(-c)
    j = [-math.expm1(-c)]
    for p in range(1, count):
        j.append(p / c * j[-1] - e)
    return [(-1) ** p * v for p, v in enumerate(j)]


def stochastic_adams_coefficients(nodes: list[float], c: float) -> list[float]:
    """b_j = int_{-1}^0 c e^(c v) l_j(v) dv for the Lagrange basis l_j of ``nodes`` (v = (lambda -
    lambda_next)/h, lambda = -log sigma): SA-Solver's exact exponential integrals in data prediction
    (Xue et al. 2023; alpha = 1 here, c = (1 + tau^2) h). sum_j b_j = 1 - e^-c."""
    m = _exp_moments(c, len(nodes))
    out = []
    for j, vj in enumerate(nodes):
        poly = [1.0]  # coefficients of prod_{k != j} (v - v_k) / (v_j - v_k), lowest first
        for k, vk in enumerate(nodes):
            if k != j:
                scale = 1.0 / (vj - vk)
                poly = [
                    ((poly[p - 1] if p else 0.0) - vk * (poly[p] if p < len(poly) else 0.0)) * scale
                    for p in range(len(poly) + 1)
                ]
        out.append(sum(a * mp for a, mp in zip(poly, m)))
    return out


def _sa_nfe(n: int, pece: bool = False, corrector_order: int = 4, **_: Any) -> int:
    return 2 * n - 1 if pece and corrector_order > 0 else n


@register("sa_solver", order=4, nfe=_sa_nfe, stochastic=True, noises=NOISES)
def sa_solver(
    grid: SamplerGrid,
    x: Tensor,
    *,
    step: Step,
    predictor_order: int = 3,
    corrector_order: int = 4,
    eta: float = 1.0,
    noise_interval: tuple[float, float] = (0.57, 5.1),
    pece: bool = False,
    s_noise: float = 1.0,
    final: str = "tau",
) -> Tensor:
    """SA-Solver: stochastic Adams predictor-corrector with exact integrals (Xue et al. 2023).

    Data prediction: x' = e^-c x + sum_j b_j D_j + s' sqrt(1 - e^(-2 tau^2 h)) z, c = (1 + tau^2) h,
    h = log(s/s'), b_j the exact exponential integrals of the Lagrange interpolant of the last D's
    (``stochastic_adams_coefficients``); the corrector redoes the step with the D just evaluated at
    the prediction among the nodes, and the same z.

    Predictor of ``predictor_order`` past values, corrector of ``corrector_order`` values including
    the one just evaluated at the prediction (0 = none), in PEC mode: the next predictor reuses
    D(prediction), so NFE = n; ``pece`` re-evaluates D at each corrected point (NFE = 2n - 1), which
    ComfyUI calls sa_solver_pece. tau = ``eta`` on steps that end inside ``noise_interval`` (sigma),
    else 0 (the ODE): the default interval is ComfyUI's / diffusers' (timesteps 200..800 of SD's
    1000, sigma 0.57..5.1); (0, inf) noises every step. tau = 1 on a step is the DDPM posterior.
    Start-up: orders min(order, values available); the last step into 0 skips the corrector in PEC
    mode (as ComfyUI) and ends with ``final_step``; no lower-order-at-the-end rule. The noise-free
    limit (eta = 0) has order min(corrector_order, predictor_order + 1) with a corrector (4 by
    default, measured), predictor_order without. Degree of fidelity: the paper's method with exact
    integrals, tau piecewise constant per step (its value at the step's end, as ComfyUI).
    """
    _check(
        predictor_order >= 1 and corrector_order >= 0,
        "need predictor_order >= 1 and corrector_order >= 0",
    )
    _check(eta >= 0, f"eta must be >= 0, got {eta}")
    check_final(final)
    keep = max(predictor_order, corrector_order)
    table = _sa_table(
        tuple(grid.sigmas), predictor_order, corrector_order, eta, noise_interval, pece
    )
    history: list[Tensor] = []  # D at the last ``keep`` levels, newest last
    x_pred, x_prev, z = x, x, None
    for i in range(grid.steps):
        denoised = grid.denoise(x_pred, i)
        history = [*history[-(keep - 1) :], denoised] if keep > 1 else [denoised]
        x = x_pred
        corrector, predictor = table[i]
        if corrector is not None:
            decay, b = corrector
            x = combine(x_prev, decay, b, history[-len(b) :])
            if z is not None:
                x.add_(z)
            if pece:
                denoised = grid.denoise(x, i, stage=True)
                history[-1] = denoised
        if predictor is None:
            return final_step(x, denoised, final, grid[i])
        decay, b, std = predictor
        x_pred, z = step(i, combine(x, decay, b, history[-len(b) :]), s_noise * std)
        x_prev = x
    return x_pred


SaStep = tuple[
    tuple[float, tuple[float, ...]] | None, tuple[float, tuple[float, ...], float] | None
]


@functools.lru_cache(maxsize=256)
def _sa_table(
    sigmas: tuple[float, ...],
    predictor_order: int,
    corrector_order: int,
    eta: float,
    noise_interval: tuple[float, float],
    pece: bool,
) -> tuple[SaStep, ...]:
    """Per step i, once per grid and options: the corrector (e^-c of the last prediction, weights on
    the newest D's) or None, and the predictor (e^-c, weights, noise std) or None into sigma = 0."""
    lo, hi = noise_interval
    keep = max(predictor_order, corrector_order)
    lams = [-math.log(s) if s > 0 else math.inf for s in sigmas]
    table: list[SaStep] = []
    last = (0.0, 0.0, 0.0)  # (e^-c, c, h) of the last prediction
    for i in range(len(sigmas) - 1):
        s, nxt = sigmas[i], sigmas[i + 1]
        available = min(i + 1, keep)
        order = min(corrector_order, available)
        corrector = None
        if i > 0 and order > 0 and (pece or nxt > 0):
            decay, c, h = last
            nodes = [(lams[j] - lams[i]) / h for j in range(i - order + 1, i + 1)]
            corrector = (decay, tuple(stochastic_adams_coefficients(nodes, c)))
        if nxt == 0:
            table.append((corrector, None))
            break
        tau = eta if lo <= nxt <= hi else 0.0
        h = math.log(s / nxt)
        c = (1 + tau * tau) * h
        decay = (nxt / s) * math.exp(-tau * tau * h)
        order = min(predictor_order, available)
        nodes = [(lams[j] - lams[i]) / h - 1.0 for j in range(i - order + 1, i + 1)]
        std = nxt * math.sqrt(-math.expm1(-2 * tau * tau * h)) if tau > 0 else 0.0
        table.append((corrector, (decay, tuple(stochastic_adams_coefficients(nodes, c)), std)))
        last = (decay, c, h)
    return tuple(table)
