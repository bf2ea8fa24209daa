"""Exponential integrators in lambda = -log sigma: DPM-Solver-1/2/3 and DPM-Solver-fast (noise
prediction; ``dpm_2`` is DPM-Solver-2), DPM-Solver++(2S) and (3M) (data prediction), the
DPM-Solver++(2M)/(3M) SDEs, and the ancestral 2S and DPM-2 samplers.

In x = x0 + sigma eps coordinates (alpha = 1) a step from sigma to sigma' has h = log(sigma/sigma')
and the probability-flow ODE dx/dlambda = D - x = -sigma eps integrates exactly to

    data prediction   x' = (s'/s) x + int_0^h e^(u - h) D(lambda + u) du
    noise prediction  x' = x - s' int_0^h e^(h - u) eps(lambda + u) du,       eps = (x - D) / sigma,

with D (or eps) expanded in lambda (Lu et al. 2022, 2022b). The SDE family dx = (1 + eta)(D - x)
dlambda + sqrt(2 eta) sigma dW shares the ODE's marginals (eta = 1: the reverse diffusion SDE); its
data-prediction step is x' = e^-H x + int_0^h (1 + eta) e^((1 + eta)(u - h)) D du + s' sqrt(1 -
e^(-2 eta h)) z with H = (1 + eta) h (SDE-DPM-Solver++, Lu et al. 2022b; k-diffusion's
``sample_dpmpp_2m_sde``). For D(lambda + u) = D + u D' + u^2/2 D'' the integral is
phi1 D + phi2 h D' - phi3 h^2 D'' with (functions of H; eta = 0 is the ODE)

    phi1 = -expm1(-H),  phi2 = 1 + expm1(-H) / H,  phi3 = phi2 / H - 1/2.

Coefficients are Python floats of the host grid. The last interval into sigma = 0 is
:func:`difflab.sampling.steps.final_step` (1 NFE, option ``final``), given the previous step's eps
on a deterministic path; it adds no noise. The registry's order of a stochastic sampler is that of
its eta = 0 limit (measured in the tests); with noise they are tested in distribution.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from functools import partial

from torch import Tensor

from difflab.sampling.noise import NOISES
from difflab.sampling.registry import SamplerGrid, register
from difflab.sampling.samplers.stochastic import ancestral_split
from difflab.sampling.steps import (
    check_final,
    combine,
    ddim_step,
    final_step,
    phis,
    previous_eps,
)
from difflab.sampling.transitions import Step, deterministic

__all__ = [
    "dpm_2_ancestral",
    "dpm_solver_1",
    "dpm_solver_2",
    "dpm_solver_3",
    "dpm_solver_fast",
    "dpmpp_2m_sde",
    "dpmpp_2s",
    "dpmpp_2s_ancestral",
    "dpmpp_3m",
    "dpmpp_3m_sde",
    "fast_orders",
]

# third-order term of dpmpp_3m / dpmpp_3m_sde: exact, or the DPM-Solver code's (half of it)
VARIANTS = ("taylor", "reference")
# "taylor" takes a third-order step only where it is <= MAX_RATIO times the previous one (in lambda)
MAX_RATIO = 3.0

Update = Callable[[SamplerGrid, Tensor, Tensor, float, float, int], Tensor]


# ---------------------------------------------------------------------------- shared math


def _sigma_at(s: float, nxt: float, r: float) -> float:
    """The level at lambda + r h between s and nxt: s^(1-r) nxt^r."""
    return math.exp((1 - r) * math.log(s) + r * math.log(nxt))


def _phi(big: float) -> tuple[float, float, float]:
    """(phi1, phi2, phi3) of H (module docstring) = (H phi_1(-H), H phi_2(-H), -H phi_3(-H)) in the
    standard phi_k; the power series below H = 1, where the closed forms cancel."""
    phi1 = -math.expm1(-big)
    if big < 1.0:
        _, p2, p3 = phis(3, -big)
        return phi1, big * p2, -big * p3
    phi2 = 1 + math.expm1(-big) / big
    return phi1, phi2, phi2 / big - 0.5


def _check_eta(eta: float, s_noise: float, ancestral: bool) -> None:
    if ancestral and not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1] for an ancestral sampler, got {eta}")
    if not (eta >= 0 and math.isfinite(eta)):
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    if not (s_noise >= 0 and math.isfinite(s_noise)):
        raise ValueError(f"s_noise must be a finite number >= 0, got {s_noise}")


# ---------------------------------------------------------------------------- one-step updates


def _eps(grid: SamplerGrid, u: Tensor, i: int, sigma: float) -> Tensor:
    return (u - grid.denoise(u, i, sigma=sigma)) / sigma


def _dpm_solver_step(
    grid: SamplerGrid, x: Tensor, denoised: Tensor, s: float, nxt: float, i: int, order: int
) -> Tensor:
    """DPM-Solver-k, k = 1, 2, 3 (Lu et al. 2022, Alg. 1 with r1 = 1/2, Alg. 2 with r1 = 1/3,
    r2 = 2/3), noise prediction: x' = x - s' expm1(h) eps - (correction in eps differences).

    x - s' expm1(h) eps is written as the identical DDIM step D + (s'/s)(x - D), which does not
    cancel catastrophically when s' << s in low precision."""
    base = ddim_step(x, denoised, s, nxt)
    if order == 1:
        return base
    h = math.log(s / nxt)
    eps = (x - denoised) / s
    r1 = 0.5 if order == 2 else 1 / 3
    s1 = _sigma_at(s, nxt, r1)
    d1 = _eps(grid, ddim_step(x, denoised, s, s1), i, s1) - eps
    if order == 2:
        return base - (nxt * math.expm1(h) / (2 * r1)) * d1
    r2 = 2 / 3
    s2 = _sigma_at(s, nxt, r2)
    u2 = ddim_step(x, denoised, s, s2) - (s2 * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1)) * d1
    d2 = _eps(grid, u2, i, s2) - eps
    return base - (nxt / r2 * (math.expm1(h) / h - 1)) * d2


def _dpmpp_2s_step(
    grid: SamplerGrid, x: Tensor, denoised: Tensor, s: float, nxt: float, i: int
) -> Tensor:
    """DPM-Solver++(2S), r = 1/2: u = (s_m/s) x - expm1(-h/2) D, x' = (s'/s) x - expm1(-h) D(u, s_m)
    with s_m = sqrt(s s') (Lu et al. 2022b, Alg. 1; with r = 1/2 the weight 1 - 1/2r on D is 0)."""
    mid = _sigma_at(s, nxt, 0.5)
    return ddim_step(x, grid.denoise(ddim_step(x, denoised, s, mid), i, sigma=mid), s, nxt)


# ---------------------------------------------------------------------------- sampler loops


def _singlestep(
    grid: SamplerGrid,
    x: Tensor,
    update: Update,
    final: str,
    eta: float = 0.0,
    s_noise: float = 1.0,
    step: Step = deterministic,
) -> Tensor:
    """D at every grid level, one ``update`` per interval (to sigma_down, then the transition
    ``step`` adds sigma_up noise when eta > 0), final_step into 0 (with the previous step's eps on
    a deterministic path)."""
    check_final(final)
    _check_eta(eta, s_noise, ancestral=True)
    last = None
    for i in range(grid.steps):
        s, nxt = grid[i], grid[i + 1]
        denoised = grid.denoise(x, i)
        if nxt == 0:
            return final_step(x, denoised, final, s, previous_eps(last))
        down, up = ancestral_split(s, nxt, eta)  # (s', 0) when eta = 0
        if eta == 0:
            last = (x, denoised, s)
        x, _ = step(i, update(grid, x, denoised, s, down, i), s_noise * up)
    return x


def _multistep(
    grid: SamplerGrid,
    x: Tensor,
    *,
    order: int,
    final: str,
    eta: float = 0.0,
    s_noise: float = 1.0,
    step: Step = deterministic,
    solver_type: str = "heun",
    variant: str = "taylor",
    ancestral: bool = False,
) -> Tensor:
    """DPM-Solver++ multistep of ``order`` 2 or 3 in data prediction, deterministic (eta = 0) or the
    SDE of the module docstring: D(lambda + u) is the polynomial through the last ``order`` D's,
    integrated exactly. Start-up: order 1, then 2, then ``order``; the transition ``step`` adds
    the noise (eta > 0). ``ancestral``: the ODE integral to sigma_down, then sigma_up z
    (:func:`~difflab.sampling.samplers.stochastic.ancestral_split`, eta in [0, 1]) instead of the SDE.

    Second-order term: "heun" phi2 h D' (the exact integral of the linear interpolant) or "midpoint"
    phi1 h D' / 2 (DPM-Solver++(2M), Lu et al. 2022b, Alg. 2). Third-order term: ``variant``
    "taylor" -phi3 h^2 D'' (exact; steps longer than MAX_RATIO times the previous one stay at
    order 2), "reference" half of it on every step (see dpmpp_3m).
    """
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    check_final(final)
    _check_eta(eta, s_noise, ancestral)
    table = _multistep_table(tuple(grid.sigmas), order, eta, solver_type, variant, ancestral)
    hist: list[Tensor] = []  # D of the previous steps, newest first
    last = None  # (x, D, sigma) of the previous step on a deterministic path, for final_step
    for i in range(grid.steps):
        s, nxt = grid[i], grid[i + 1]
        denoised = grid.denoise(x, i)
        if nxt == 0:
            return final_step(x, denoised, final, s, previous_eps(last))
        if eta == 0:
            last = (x, denoised, s)
        decay, weights, std = table[i]
        x, _ = step(i, combine(x, decay, weights, [denoised, *hist]), std * s_noise, fused=True)
        hist = [denoised, *hist][: order - 1]
    return x


@functools.lru_cache(maxsize=256)
def _multistep_table(
    sigmas: tuple[float, ...],
    order: int,
    eta: float,
    solver_type: str,
    variant: str,
    ancestral: bool = False,
) -> tuple[tuple[float, tuple[float, ...], float], ...]:
    """Per step but a final one into 0, once per grid and options: (e^-H, weights on the newest
    D's, noise std) of x' = e^-H x + sum_j w_j D_j + std z, H = (1 + eta) h, the D's h apart in
    lambda; ``ancestral``: H = span = log(s / sigma_down), std = sigma_up, and the D's stand span
    apart (the ODE clock: the noise raises the level without advancing it; res_multistep_ancestral)."""
    table = []
    hs: list[float] = []  # h of the previous steps, newest first
    for i in range(len(sigmas) - 1 - (sigmas[-1] == 0)):
        s, nxt = sigmas[i], sigmas[i + 1]
        h = math.log(s / nxt)
        span, big = h, (1 + eta) * h  # the integral's length in lambda, and H
        std = nxt * math.sqrt(-math.expm1(-2 * eta * h)) if eta > 0 else 0.0
        if ancestral:
            down, std = ancestral_split(s, nxt, eta)
            span = big = math.log(s / down)
        phi1, phi2, phi3 = _phi(big)
        if len(hs) == 2 and (variant == "reference" or MAX_RATIO * hs[0] >= span):  # third order
            k3 = (1 if variant == "reference" else 2) * phi3
            weights: tuple[float, ...] = _third_order(span, hs[0], hs[1], phi1, phi2, k3)
        elif hs:  # second order: D' of the line through 2 D's
            c = (phi1 / 2 if solver_type == "midpoint" else phi2) * span / hs[0]
            weights = (phi1 + c, -c)
        else:
            weights = (phi1,)
        table.append((math.exp(-big), weights, std))
        hs = [span, *hs][: order - 1]
    return tuple(table)


def _third_order(
    h: float, h_1: float, h_2: float, phi1: float, phi2: float, k3: float
) -> tuple[float, float, float]:
    """Weights on (D, D_1, D_2) of phi1 D + phi2 h D' - k3 h^2 D''/2, with h D' and h^2 D''/2 the
    divided differences of the quadratic through the three D's (r0 = h_1/h, r1 = h_2/h):
    d1_0 = (D - D_1)/r0, d1_1 = (D_1 - D_2)/r1, d2 = (d1_0 - d1_1)/(r0 + r1), h D' = d1_0 + r0 d2."""
    r0, r1 = h_1 / h, h_2 / h
    d1_0 = (1 / r0, -1 / r0, 0.0)
    d1_1 = (0.0, 1 / r1, -1 / r1)
    d2 = [(a - b) / (r0 + r1) for a, b in zip(d1_0, d1_1)]
    return tuple(
        (phi1 if j == 0 else 0.0) + phi2 * (d1_0[j] + r0 * d2[j]) - k3 * d2[j] for j in range(3)
    )


# ---------------------------------------------------------------------------- DPM-Solver


@register("dpm_solver_1", order=1)
def dpm_solver_1(grid: SamplerGrid, x: Tensor, *, final: str = "tau") -> Tensor:
    """DPM-Solver-1: x' = x - s' expm1(h) eps, eps = (x - D)/s: DDIM (Lu et al. 2022, Eq. 3.7).

    NFE = n: one per interval, the last being final_step. The same update as euler / ddim,
    registered with its family."""
    return _singlestep(grid, x, partial(_dpm_solver_step, order=1), final)


@register("dpm_solver_2", order=2, nfe=lambda n: 2 * n - 1, aliases=("dpm_2",))
def dpm_solver_2(grid: SamplerGrid, x: Tensor, *, final: str = "tau") -> Tensor:
    """DPM-Solver-2: x' = x - s' expm1(h) eps(u, s_m), u = DDIM to s_m = sqrt(s s'); Lu et al. 2022.

    Noise prediction with r1 = 1/2 as in the paper (its order-1 part evaluated as the identical
    DDIM step). NFE = 2(n - 1) + 1: two per interval, one for the final interval into 0.

    Alias ``dpm_2``: k-diffusion's ``sample_dpm_2`` (Euler to the log-sigma midpoint, then
    x' = x + (s' - s) d(u, s_m), d = (x - D)/sigma; Karras et al. 2022's form) is this update,
    since s' expm1(h) = s - s' and Euler in sigma is DDIM. Its s_churn is not offered here (the
    stochastic samplers churn)."""
    return _singlestep(grid, x, partial(_dpm_solver_step, order=2), final)


@register("dpm_solver_3", order=3, nfe=lambda n: 3 * n - 2)
def dpm_solver_3(grid: SamplerGrid, x: Tensor, *, final: str = "tau") -> Tensor:
    """DPM-Solver-3: noise prediction with stages at lambda + h/3, + 2h/3 (Lu et al. 2022, Alg. 2).

    Noise prediction, r1 = 1/3, r2 = 2/3: x' = x - s' expm1(h) eps - (s'/r2)(expm1(h)/h - 1)
    (eps_2 - eps). NFE = 3(n - 1) + 1: three per interval, one for the final interval into 0."""
    return _singlestep(grid, x, partial(_dpm_solver_step, order=3), final)


def fast_orders(budget: int) -> list[int]:
    """DPM-Solver-fast's step orders for ``budget`` NFE (Lu et al. 2022, Sec. 3.4): K = budget // 3
    + 1 steps, [3] * (K - 2) + [2, 1] if 3 divides the budget, else [3] * (K - 1) + [budget % 3]."""
    if budget <= 0:
        return []
    k = budget // 3 + 1
    return [3] * (k - 2) + [2, 1] if budget % 3 == 0 else [3] * (k - 1) + [budget % 3]


@register("dpm_solver_fast", order=2)
def dpm_solver_fast(grid: SamplerGrid, x: Tensor, *, final: str = "tau") -> Tensor:
    """DPM-Solver-fast: an NFE budget as 3rd-order steps, then one of order 2 or 1 (Lu et al. 2022).

    Sec. 3.4 of the paper. The grid gives its endpoints and its length; NFE = n. With n intervals
    ending in 0 the budget N = n - 1 is spent between sigma_0 and sigma_(n-1) on K = N // 3 + 1
    steps uniform in lambda (orders by :func:`fast_orders`), then the final interval into 0 is
    final_step (1 NFE); a grid ending above 0 spends N = n between its ends. The interior levels
    are not used: the method places its own steps (k-diffusion's ``sample_dpm_fast(sigma_min,
    sigma_max, N)``). Measured order: 3 when N % 3 == 2 (last step of order 2), else 2 (last step of
    order 1), hence the registered 2. The callback sees the two grid levels it evaluates (the first
    and the last above 0)."""
    check_final(final)
    n = grid.steps
    last = n - 1 if grid[n] == 0 else n
    orders = fast_orders(last)
    k = len(orders)
    lo, hi = math.log(grid[last]), math.log(grid[0])
    levels = [grid[0], *(math.exp(hi + (lo - hi) * j / k) for j in range(1, k)), grid[last]]
    previous = None
    for j, order in enumerate(orders):
        s, nxt = levels[j], levels[j + 1]
        denoised = grid.denoise(x, 0) if j == 0 else grid.denoise(x, 0, sigma=s)
        x, previous = _dpm_solver_step(grid, x, denoised, s, nxt, 0, order), (x, denoised, s)
    if last == n:
        return x
    return final_step(x, grid.denoise(x, last), final, grid[last], previous_eps(previous))


# ---------------------------------------------------------------------------- DPM-Solver++


@register("dpmpp_2s", order=2, nfe=lambda n: 2 * n - 1)
def dpmpp_2s(grid: SamplerGrid, x: Tensor, *, final: str = "tau") -> Tensor:
    """DPM-Solver++(2S): x' = (s'/s) x - expm1(-h) D(u, s_m), u = DDIM to s_m (Lu et al. 2022b).

    Data prediction, r = 1/2 (where the weight 1 - 1/2r on D vanishes). NFE = 2(n - 1) + 1: two
    per interval, one for the final interval into 0. k-diffusion's ``sample_dpmpp_2s_ancestral``
    with eta = 0."""
    return _singlestep(grid, x, _dpmpp_2s_step, final)


@register("dpmpp_2s_ancestral", order=2, nfe=lambda n: 2 * n - 1, stochastic=True, noises=NOISES)
def dpmpp_2s_ancestral(
    grid: SamplerGrid,
    x: Tensor,
    *,
    step: Step,
    eta: float = 1.0,
    s_noise: float = 1.0,
    final: str = "tau",
) -> Tensor:
    """Ancestral DPM-Solver++(2S): a 2S step to sigma_down, + s_noise sigma_up z (k-diffusion).

    sigma_up = eta s' sqrt(1 - s'^2/s^2), sigma_down = sqrt(s'^2 - sigma_up^2)
    (:func:`~difflab.sampling.samplers.stochastic.ancestral_split`); eta in [0, 1] (1: DDPM's
    posterior noise, 0: dpmpp_2s). A larger eta is refused: k-diffusion then clips sigma_down to 0
    and the step changes its cost. NFE = 2(n - 1) + 1. Registered order: of the eta = 0 limit."""
    return _singlestep(grid, x, _dpmpp_2s_step, final, eta, s_noise, step)


@register("dpmpp_3m", order=3)
def dpmpp_3m(
    grid: SamplerGrid, x: Tensor, *, final: str = "tau", variant: str = "taylor"
) -> Tensor:
    """DPM-Solver++(3M): x' = (s'/s) x + phi1 D + phi2 h D' - phi3 h^2 D'', 3 D's (Lu et al. 2022b).

    D' and D'' are those of the quadratic through the last three D's (DPM-Solver's multistep third
    order). NFE = n. Start-up: order 1, then 2 (phi2 h D' of the line through two D's), then 3; a
    grid of fewer steps runs at the lower orders. The first-order first step leaves an O(h^2)
    error, small because it lies at high noise where D barely moves: the third order shows over
    practical step counts, and asymptotically on grids whose first step is refined (tests).

    ``variant``: "taylor" (default) integrates the D'' term exactly, and takes a third-order step
    only where it is at most MAX_RATIO = 3 times the previous step in lambda, else a second-order
    one: a quadratic extrapolated far beyond the points it was fitted on amplifies their errors
    (on grids uniform in t and laplace ones, whose last step into sigma_min is long, the error is
    2.3x smaller with this guard; SDE samples leave the data range without it).

    "reference" is the update of the official DPM-Solver code, diffusers (``solver_order=3``) and
    k-diffusion (``sample_dpmpp_3m_sde`` with eta = 0), reproduced exactly (tests): its
    D2 = (D1_0 - D1_1) / (r0 + r1) = h^2 D''/2 is weighted by -phi3 where the integral needs
    -2 phi3 D2, which leaves a local error ~h^3 D''/12: that method is second order (measured 2.0
    against 3.0). Its damped extrapolation is not less accurate in practice, though. On the exact
    ring2d, stiff (16-d) and two random mixtures, SD's DDPM sigmas 14.6 -> 0.029, 9 grids x 5-50
    steps (endpoint RMSE against the exact flow, geometric means), "taylor" / "reference" is 0.9 at
    5-8 steps, 1.0 at 10, 1.06-1.2 at 15-50; 0.7-0.86 on log-uniform, uniform-t and laplace grids,
    1.2-1.35 on karras, AYS and beta ones (whose steps grow ~2x per step); on karras and
    log-uniform grids "taylor" converges at order 3 and wins from ~50-100 steps."""
    return _multistep(grid, x, order=3, final=final, variant=variant)


@register("dpmpp_2m_sde", order=2, stochastic=True, noises=NOISES)
def dpmpp_2m_sde(
    grid: SamplerGrid,
    x: Tensor,
    *,
    step: Step,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
    final: str = "tau",
) -> Tensor:
    """DPM-Solver++(2M) SDE: 2M for H = (1+eta) h, + s' sqrt(1 - e^(-2 eta h)) z (Lu et al. 2022b).

    x' = e^-H x + phi1 D + c (h/h_prev)(D - D_prev) + s' sqrt(1 - e^(-2 eta h)) z, H = (1 + eta) h,
    with ``solver_type`` c = phi1 / 2 ("midpoint", default) or phi2 ("heun"), as
    k-diffusion's ``sample_dpmpp_2m_sde`` and diffusers' ``sde-dpmsolver++``. eta >= 0 scales the
    SDE's noise (1: the reverse SDE; 0: the probability flow, with "midpoint" exactly dpmpp_2m);
    ``s_noise`` scales the injected noise alone. NFE = n; start-up order 1; the final interval into
    0 is final_step without noise, given the previous step's eps only when eta = 0 (with noise the
    previous step lies on another path). Noise: i.i.d. normal per step from the caller's
    generator(s); ``noise="brownian"`` takes k-diffusion's default, the increments of a Brownian
    tree (difflab.sampling.noise). Registered order: of eta = 0."""
    return _multistep(
        grid,
        x,
        order=2,
        final=final,
        eta=eta,
        s_noise=s_noise,
        step=step,
        solver_type=solver_type,
    )


@register("dpmpp_3m_sde", order=3, stochastic=True, noises=NOISES)
def dpmpp_3m_sde(
    grid: SamplerGrid,
    x: Tensor,
    *,
    step: Step,
    eta: float = 1.0,
    s_noise: float = 1.0,
    final: str = "tau",
    variant: str = "taylor",
) -> Tensor:
    """DPM-Solver++(3M) SDE: 3M with H = (1 + eta) h, + s' sqrt(1 - e^(-2 eta h)) z (k-diffusion).

    eta, s_noise, noise and the final step as dpmpp_2m_sde; ``variant`` as dpmpp_3m ("reference"
    with the same noise is k-diffusion's ``sample_dpmpp_3m_sde``). eta = 0 is dpmpp_3m. NFE = n;
    start-up order 1, 2, then 3. Registered order: of the eta = 0 limit."""
    return _multistep(
        grid, x, order=3, final=final, eta=eta, s_noise=s_noise, step=step, variant=variant
    )


# ---------------------------------------------------------------------------- ancestral DPM-2


@register("dpm_2_ancestral", order=2, nfe=lambda n: 2 * n - 1, stochastic=True, noises=NOISES)
def dpm_2_ancestral(
    grid: SamplerGrid,
    x: Tensor,
    *,
    step: Step,
    eta: float = 1.0,
    s_noise: float = 1.0,
    final: str = "tau",
) -> Tensor:
    """Ancestral DPM-2: a DPM-Solver-2 step to sigma_down, + s_noise sigma_up z (k-diffusion).

    sigma_down, sigma_up and eta in [0, 1] as dpmpp_2s_ancestral; eta = 0 is dpm_2. NFE =
    2(n - 1) + 1. Registered order: of the eta = 0 limit."""
    return _singlestep(grid, x, partial(_dpm_solver_step, order=2), final, eta, s_noise, step)
