"""Singlestep stochastic exponential integrators: k-diffusion's DPM-Solver++ SDE (``dpmpp_sde``),
SEEDS-2 and SEEDS-3 (Gonzalez et al. 2023), and the exponential Heun method in data prediction
(ComfyUI's ``exp_heun_2_x0``).

Coordinates as in :mod:`difflab.sampling.samplers.exponential`: lambda = -log sigma, a step from s to
s' has h = log(s / s'), and the SDE family dx = (1 + eta)(D - x) dlambda + sqrt(2 eta) sigma dW
(eta = 0: the probability flow; eta = 1: the reverse diffusion SDE) integrates over a lambda-segment
of length l, with D(lambda + u) = D + u D', to

    x_l = e^(-H) x + phi1(H) D + phi2(H) l D' + sigma_l sqrt(1 - e^(-2 eta l)) z,    H = (1 + eta) l,

phi1 = 1 - e^-H, phi2 = 1 - (1 - e^-H) / H. A stage at lambda + c h is such a segment with l = c h.
SEEDS splits the stochastic integral of a step at its stages: with N_0 = 0 and z_k =
``noise(sigma_(k-1), sigma_k)``, N_k = e^(-eta dl) N_(k-1) + sqrt(1 - e^(-2 eta dl)) z_k (dl the
segment between the stages), and stage k adds sigma_k s_noise N_k. Every stage then sees the same
noise path, with the exact joint law of the Ornstein-Uhlenbeck integrals (N_k has variance
1 - e^(-2 eta c_k h), and each stage's noise decays into the next).

The last interval into sigma = 0 is :func:`~difflab.sampling.steps.final_step` (1 NFE, option
``final``; "denoised" is ComfyUI's and k-diffusion's x = D), given the previous step's eps only on a
deterministic path (eta = 0). The registry's order of a stochastic sampler is that of its eta = 0
limit (measured in the tests); with noise they are tested in distribution.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from difflab.sampling.noise import NOISES, Noise
from difflab.sampling.registry import SamplerGrid, register
from difflab.sampling.samplers.exponential import _check_eta, _phi, _sigma_at
from difflab.sampling.samplers.stochastic import ancestral_split
from difflab.sampling.steps import check_final, combine, ddim_step, final_step, previous_eps

__all__ = ["dpmpp_sde", "exp_heun_2_x0", "seeds_2", "seeds_3"]

Step = Callable[[Tensor, Tensor, float, float, int], Tensor]


def _singlestep_sde(
    grid: SamplerGrid, x: Tensor, step: Step, final: str, deterministic: bool
) -> Tensor:
    """D at every grid level, ``step(x, D, s, s', i)`` on every interval but a final one into 0,
    which is final_step (with the previous step's eps when the path is ``deterministic``)."""
    last = None
    for i in range(grid.steps):
        s, nxt = grid[i], grid[i + 1]
        denoised = grid.denoise(x, i)
        if nxt == 0:
            return final_step(x, denoised, final, s, previous_eps(last))
        if deterministic:
            last = (x, denoised, s)
        x = step(x, denoised, s, nxt, i)
    return x


def _check_fractions(fractions: tuple[float, ...]) -> None:
    if not all(a < b for a, b in zip((0.0, *fractions), fractions)) or fractions[-1] > 1:
        raise ValueError(f"stage fractions must satisfy 0 < r_1 < ... <= 1, got {fractions}")


def _segment(length: float, eta: float) -> tuple[float, float, float]:
    """(e^-H, phi1(H), phi2(H)) of a lambda-segment of ``length``, H = (1 + eta) length."""
    big = (1 + eta) * length
    phi1, phi2, _ = _phi(big)
    return math.exp(-big), phi1, phi2


def _path_noise(
    previous: Tensor | None, noise: Noise, a: float, b: float, span: float, eta: float
) -> Tensor:
    """N' = e^(-eta span) N + sqrt(1 - e^(-2 eta span)) noise(a, b): the unit noise of the SDE from
    the step's start to the next stage (module docstring)."""
    fresh = noise(a, b).mul_(math.sqrt(-math.expm1(-2 * eta * span)))
    return fresh if previous is None else fresh.add_(previous, alpha=math.exp(-eta * span))


def _seeds(
    grid: SamplerGrid,
    x: Tensor,
    *,
    fractions: tuple[float, ...],
    weights: Callable[[float, float, float], tuple[float, float]],
    eta: float,
    s_noise: float,
    noise: Noise | None,
    final: str,
) -> Tensor:
    """SEEDS with stages at lambda + c h for c in ``fractions`` (the last < 1), in data prediction:
    stage 1 is the exponential Euler step of D, stage k + 1 integrates the line through (0, D) and
    (c_k, D_k) exactly over [0, c_(k+1) h], and the step ends with ``weights(phi1, phi2, r)`` =
    (w, w_r) on (D, D_r) of the last stage r (module docstring for the noise)."""
    check_final(final)
    _check_eta(eta, s_noise, ancestral=False)
    _check_fractions(fractions)
    noisy = eta > 0 and s_noise > 0 and noise is not None

    def step(x: Tensor, denoised: Tensor, s: float, nxt: float, i: int) -> Tensor:
        h = math.log(s / nxt)
        level, total, previous = s, None, (0.0, denoised)  # previous stage (c, D)
        for c in fractions:
            to = nxt if c == 1 else _sigma_at(s, nxt, c)
            decay, phi1, phi2 = _segment(c * h, eta)
            c_prev, d_prev = previous
            if c_prev == 0:
                u = combine(x, decay, [phi1], [denoised])
            else:  # phi2 c h D' with D' = (D_prev - D) / (c_prev h)
                k = phi2 * c / c_prev
                u = combine(x, decay, [phi1 - k, k], [denoised, d_prev])
            if noisy:
                total = _path_noise(total, noise, level, to, (c - c_prev) * h, eta)
                u.add_(total, alpha=to * s_noise)
            level, previous = to, (c, grid.denoise(u, i, sigma=to))
        decay, phi1, phi2 = _segment(h, eta)
        c_last, d_last = previous
        out = combine(x, decay, weights(phi1, phi2, c_last), [denoised, d_last])
        if noisy and c_last < 1:
            total = _path_noise(total, noise, level, nxt, (1 - c_last) * h, eta)
        if noisy:
            out.add_(total, alpha=nxt * s_noise)
        return out

    return _singlestep_sde(grid, x, step, final, deterministic=eta == 0)


def _phi_2_weights(phi1: float, phi2: float, r: float) -> tuple[float, float]:
    """phi1 D + phi2 h D' with D' = (D_r - D) / (r h): the exact integral of the line."""
    return phi1 - phi2 / r, phi2 / r


def _phi_1_weights(phi1: float, phi2: float, r: float) -> tuple[float, float]:
    """phi1 ((1 - 1/2r) D + D_r / 2r): DPM-Solver++(2S)'s combination (Lu et al. 2022b)."""
    return phi1 * (1 - 1 / (2 * r)), phi1 / (2 * r)


SEEDS_2_SOLVERS = {"phi_1": _phi_1_weights, "phi_2": _phi_2_weights}


@register("seeds_2", order=2, nfe=lambda n: 2 * n - 1, stochastic=True, noises=NOISES)
def seeds_2(
    grid: SamplerGrid,
    x: Tensor,
    *,
    noise: Noise,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
    solver_type: str = "phi_1",
    final: str = "tau",
) -> Tensor:
    """SEEDS-2: x' = e^-H x + phi1(H) D_d + s' N, N ~ N(0, 1 - e^(-2 eta h)) (Gonzalez et al. 2023).

    Stage u = e^(-rH) x + phi1(rH) D + s_r N_1 at s_r = s^(1-r) s'^r, D_r = D(u, s_r), then
    ``solver_type`` "phi_1" (the paper's and ComfyUI's default): D_d = (1 - 1/2r) D + D_r / 2r;
    "phi_2": phi1 D + phi2 (D_r - D) / r, the exact integral of the line through D and D_r. N_1
    and N are the step's stochastic integral split at the stage (module docstring; ``s_noise``
    scales both). The paper's SDE is
    eta = 1; eta = 0 is the probability flow (with r = 1/2, "phi_1" is dpmpp_2s). NFE = 2(n - 1) + 1.

    Where the official SEEDS code and the math disagree, the math decides: for r != 1/2 that code
    gives the final step's noise sqrt(1 - e^(-2(1 - r)h)) e^(-rh) z_1 + sqrt(1 - e^(-2rh)) z_2, which
    has the right variance but not the right covariance with the stage's noise sqrt(1 - e^(-2rh))
    z_1; the exact split of the stochastic integral is e^(-(1 - r)h) sqrt(1 - e^(-2rh)) z_1 +
    sqrt(1 - e^(-2(1 - r)h)) z_2 (as ComfyUI's ``sample_seeds_2``). At r = 1/2 they agree.
    Registered order: of the eta = 0 limit."""
    if solver_type not in SEEDS_2_SOLVERS:
        raise ValueError(f"solver_type must be 'phi_1' or 'phi_2', got {solver_type!r}")
    return _seeds(
        grid, x, fractions=(r,), weights=SEEDS_2_SOLVERS[solver_type], eta=eta,
        s_noise=s_noise, noise=noise, final=final,
    )  # fmt: skip


@register("seeds_3", order=3, nfe=lambda n: 3 * n - 2, stochastic=True, noises=NOISES)
def seeds_3(
    grid: SamplerGrid,
    x: Tensor,
    *,
    noise: Noise,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r_1: float = 1 / 3,
    r_2: float = 2 / 3,
    final: str = "tau",
) -> Tensor:
    """SEEDS-3: x' = e^-H x + phi1(H) D + phi2(H) (D_2 - D) / r_2 + noise (Gonzalez et al. 2023).

    Stages at lambda + r_1 h (exponential Euler, D_1 there) and lambda + r_2 h (e^(-r_2 H) x +
    phi1(r_2 H) D + (r_2/r_1) phi2(r_2 H)(D_1 - D): the line through D and D_1 integrated exactly,
    D_2 there), plus the noise of each stage: the third-order exponential
    Runge-Kutta scheme of DPM-Solver-3 in data prediction, with the noise of the step split at both
    stages (module docstring). Third order needs r_2 = 2/3 (then r_1 is free); other r_2 give
    order 2 (r_2 = 1 puts the last stage at s'). eta = 1 is the paper's SDE, eta = 0 the
    probability flow. NFE = 3(n - 1) + 1. Registered order: of the eta = 0 limit.

    Where the official SEEDS code and the math disagree, the math decides: its data-prediction
    SEEDS-3 weights (r_2/r_1)(D_1 - D) in the second stage by 1 + expm1(-2 r_1 h)/(r_1 h) (about -1
    as h -> 0), where the exact integral of the line through D and D_1 over [0, r_2 h] needs
    phi2(r_2 H) (about r_2 H / 2). This uses the latter, as ComfyUI's ``sample_seeds_3``, and is
    third order (measured 2.9 against the exact flow); the noise split is the exact one of the
    module docstring (the official code's equals it at r_1 = 1/3, r_2 = 2/3)."""
    return _seeds(
        grid, x, fractions=(r_1, r_2), weights=_phi_2_weights, eta=eta, s_noise=s_noise,
        noise=noise, final=final,
    )  # fmt: skip


@register("exp_heun_2_x0", order=2, nfe=lambda n: 2 * n - 1)
def exp_heun_2_x0(grid: SamplerGrid, x: Tensor, *, final: str = "tau") -> Tensor:
    """Exponential Heun in x0: x' = (s'/s) x + phi1 D + phi2 (D(u, s') - D) (Cox & Matthews 2002).

    u = the DDIM step to s', phi1 = 1 - e^-h, phi2 = 1 - (1 - e^-h)/h: the exact integral of the
    line through D at s and D at the DDIM endpoint u in lambda = -log sigma (second-order exponential Runge-Kutta with c_2 = 1,
    Cox & Matthews 2002's ETD2RK in data prediction). It is ComfyUI's ``sample_exp_heun_2_x0``:
    seeds_2 with eta = 0, r = 1, solver_type "phi_2". Unlike multistep samplers it does not reuse
    D(u, s'): two evaluations per step. NFE = 2(n - 1) + 1."""
    return _seeds(
        grid, x, fractions=(1.0,), weights=_phi_2_weights, eta=0.0, s_noise=0.0, noise=None,
        final=final,
    )  # fmt: skip


@register(
    "dpmpp_sde", order=2, nfe=lambda n: 2 * n - 1, stochastic=True, noises=("brownian", "gaussian")
)
def dpmpp_sde(
    grid: SamplerGrid,
    x: Tensor,
    *,
    noise: Noise,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
    final: str = "tau",
) -> Tensor:
    """DPM-Solver++ SDE: 2S with ancestral stages, x' = DDIM_{s->s_down}(D_d) + s_up z (k-diffusion).

    Stage: u = DDIM from s to the sigma_down of (s, s_r) with D, + sigma_up noise(s, s_r), at s_r =
    s^(1-r) s'^r; then x' = DDIM from s to the sigma_down of (s, s') with D_d = (1 - 1/2r) D +
    D(u, s_r) / 2r, + sigma_up noise(s, s'); (sigma_down, sigma_up) =
    :func:`~difflab.sampling.samplers.stochastic.ancestral_split` at ``eta`` in [0, 1]. Crowson's
    k-diffusion ``sample_dpmpp_sde`` (there is no paper); eta = 0 is DPM-Solver++(2S) with ratio r
    (Lu et al. 2022b, Alg. 1; r = 1/2: dpmpp_2s). Noise: by default the increments of a Brownian
    tree (``noise="brownian"``, k-diffusion's and ComfyUI's default), so the stage and the step see
    the same path: W(s_r) - W(s) is part of W(s') - W(s); "gaussian" draws them independently.
    Same update as k-diffusion's with the same noise, to rounding (tests). NFE = 2(n - 1) + 1.
    Registered order: of the eta = 0 limit."""
    check_final(final)
    _check_eta(eta, s_noise, ancestral=True)
    _check_fractions((r,))
    mix = 1 / (2 * r)

    def step(x: Tensor, denoised: Tensor, s: float, nxt: float, i: int) -> Tensor:
        mid = nxt if r == 1 else _sigma_at(s, nxt, r)
        down, up = ancestral_split(s, mid, eta)
        u = ddim_step(x, denoised, s, down)
        if up * s_noise > 0:
            u.add_(noise(s, mid), alpha=up * s_noise)
        mixed = torch.lerp(denoised, grid.denoise(u, i, sigma=mid), mix)
        down, up = ancestral_split(s, nxt, eta)
        out = ddim_step(x, mixed, s, down)
        if up * s_noise > 0:
            out.add_(noise(s, nxt), alpha=up * s_noise)
        return out

    return _singlestep_sde(grid, x, step, final, deterministic=eta == 0)
