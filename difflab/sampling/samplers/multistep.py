"""Multistep probability-flow ODE samplers: UniPC, DEIS, iPNDM and LMS, one NFE per step.

Each step reuses the denoiser evaluations of earlier steps instead of spending more evaluations
inside the step. Policies shared by all four (each docstring adds its own):

- Start-up: step i uses order min(order, i + 1), the history it has, so a grid with fewer steps than
  the order just runs at the lower orders (n = 1 is the final step alone). The first-order first
  step has local error O(h^2), so as h -> 0 a method of order >= 3 converges like h^2 from its
  start-up alone (UniPC with UniC like h^3). The start lies at high noise, where the flow is nearly
  linear, so that term is small: on the exact-mixture test (sigma 10 -> 0.05, exponential grid)
  3rd-order DEIS measures 2.9 from 8 to 16 steps, 2.2 from 32 to 64 and 2.0 beyond, and with its
  start-up steps refined 3.0 throughout (tests/test_samplers_multistep.py measures every order so).
- ``lower_order_final`` (UniPC, DEIS): on a grid ending in 0, step i uses order at most steps - i
  (diffusers' rule), i.e. order <= 2 into the last nonzero level, which is the longest step in log
  sigma on most grids; a grid ending above 0 keeps the full order to its end.
- NFE = steps (one evaluation at each level but the last); a zero-terminal-SNR grid adds the
  registry's exact first step: 1 + (steps - 1).
- The last interval into sigma = 0 is :func:`difflab.sampling.steps.final_step` (``final="tau"`` by
  default, ``"denoised"`` as diffusers and k-diffusion); a grid ending above 0 ends with a normal
  step.

The coefficients are exact quadratures of the polynomial through the past evaluations, computed in
Python floats: Lagrange basis polynomials in monomial form (:func:`_lagrange`) integrated against
the exact moments of the step's weight (:func:`_quadrature`), with phi functions free of
cancellation (:func:`difflab.sampling.steps.phis`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

from torch import Tensor

from difflab.sampling.registry import SamplerGrid, register
from difflab.sampling.steps import check_final, combine, final_step, phis

# --------------------------------------------------------------------------------------------
# coefficient math on the host


def _lagrange(nodes: Sequence[float]) -> list[list[float]]:
    """Monomial coefficients of the Lagrange basis on ``nodes``: ``basis[j][m]`` multiplies t^m in
    l_j(t), the polynomial of degree len(nodes) - 1 that is 1 at nodes[j] and 0 at the others.
    """
    basis = []
    for j, tj in enumerate(nodes):
        poly = [1.0]
        for k, tk in enumerate(nodes):
            if k != j:  # poly *= (t - tk) / (tj - tk)
                d = tj - tk
                poly = [
                    ((poly[m - 1] if m else 0.0) - (tk * poly[m] if m < len(poly) else 0.0)) / d
                    for m in range(len(poly) + 1)
                ]
        basis.append(poly)
    return basis


def _quadrature(nodes: Sequence[float], moments: Sequence[float]) -> list[float]:
    """Weights w_j = sum_m basis[j][m] moments[m]: sum_j w_j f(nodes[j]) integrates the
    interpolating polynomial of f against the weight whose m-th moment is moments[m]. The same
    weights solve the Vandermonde system sum_j w_j nodes[j]^m = moments[m].
    """
    return [sum(c * mu for c, mu in zip(poly, moments)) for poly in _lagrange(nodes)]


def _step_order(sigmas: Sequence[float], i: int, order: int, lower_order_final: bool) -> int:
    """The order of step i: what the history of i + 1 evaluations allows and, with
    ``lower_order_final`` on a grid ending in 0, at most the number of steps left.
    """
    k = min(order, i + 1)
    if lower_order_final and sigmas[-1] == 0:
        k = min(k, len(sigmas) - 1 - i)
    return k


def _check(name: str, order: int, highest: int, final: str) -> None:
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= highest:
        raise ValueError(f"{name}: order must be an integer in 1..{highest}, got {order!r}")
    check_final(final, name)


# --------------------------------------------------------------------------------------------
# Adams-Bashforth methods on eps = (x - D) / sigma = dx/dsigma: lms, deis, ipndm

Weights = Callable[[Sequence[float], int, int], list[float]]


@functools.lru_cache(maxsize=256)
def _adams_table(
    weights: Weights, sigmas: tuple[float, ...], order: int, lower_order_final: bool
) -> tuple[tuple[float, ...], ...]:
    """The weights of every step but a final one into 0, computed once per grid and options: a
    sampler called again on the same grid (every batch of a run) does no coefficient math."""
    steps = len(sigmas) - 1 - (sigmas[-1] == 0)
    return tuple(
        tuple(weights(sigmas, i, _step_order(sigmas, i, order, lower_order_final)))
        for i in range(steps)
    )


def _adams(
    grid: SamplerGrid,
    x: Tensor,
    order: int,
    final: str,
    weights: Weights,
    lower_order_final: bool = False,
) -> Tensor:
    """x_{i+1} = x_i + sum_j w_j eps_{i-j}, w = weights(sigmas, i, k) for the k newest eps (k from
    :func:`_step_order`): the loop of every Adams-Bashforth sampler here.
    """
    table = _adams_table(weights, tuple(grid.sigmas), order, lower_order_final)
    history: list[Tensor] = []  # eps, newest first; order - 1 kept between steps
    for i in range(grid.steps):
        s, nxt = grid[i], grid[i + 1]
        denoised = grid.denoise(x, i)
        if nxt == 0:
            previous = (history[0], grid[i - 1]) if history else None
            return final_step(x, denoised, final, s, previous)
        history.insert(0, (x - denoised).div_(s))
        x = combine(x, 1.0, table[i], history)
        del history[order - 1 :]
    return x


def _lms_weights(sigmas: Sequence[float], i: int, k: int) -> list[float]:
    """int_{s_i}^{s_{i+1}} l_j(sigma) dsigma, l_j the Lagrange basis on s_i, ..., s_{i-k+1}: in t =
    (sigma - s_i) / (s_{i+1} - s_i) the moments are int_0^1 t^m dt = 1 / (m + 1).
    """
    s, step = sigmas[i], sigmas[i + 1] - sigmas[i]
    nodes = [(sigmas[i - j] - s) / step for j in range(k)]
    return [step * w for w in _quadrature(nodes, [1.0 / (m + 1) for m in range(k)])]


def _deis_weights(sigmas: Sequence[float], i: int, k: int) -> list[float]:
    """int_{s_i}^{s_{i+1}} l_j(log sigma) dsigma, l_j the Lagrange basis in log sigma on s_i, ...,
    s_{i-k+1}: in t = log(sigma / s_{i+1}) / h, h = log(s_i / s_{i+1}), dsigma = h s_{i+1} e^{h t}
    dt and the moments int_0^1 e^{h t} t^m dt = e^h m! phi_{m+1}(-h) are closed-form.
    """
    s, nxt = sigmas[i], sigmas[i + 1]
    h = math.log(s / nxt)
    nodes = [math.log(sigmas[i - j] / nxt) / h for j in range(k)]
    moments = [math.factorial(m) * phi for m, phi in enumerate(phis(k, -h))]
    return [-h * s * w for w in _quadrature(nodes, moments)]


# Adams-Bashforth weights for equal steps, newest first
_AB = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def _ipndm_weights(sigmas: Sequence[float], i: int, k: int) -> list[float]:
    step = sigmas[i + 1] - sigmas[i]
    return [step * w for w in _AB[k - 1]]


@register("lms", order=4)
def lms(grid: SamplerGrid, x: Tensor, *, order: int = 4, final: str = "tau") -> Tensor:
    """LMS: x' = x + sum_j eps_j int_s^s' l_j(sigma) dsigma, Lagrange l_j (k-diffusion sample_lms).

    Variable-step Adams-Bashforth on eps = dx/dsigma, l_j the Lagrange basis on the last ``order``
    levels (Crowson's k-diffusion, used with Karras et al. 2022 grids). The Lagrange polynomials are
    integrated exactly (monomial form, on the host); k-diffusion uses scipy.integrate.quad. Orders
    1..4 (order 1 is Euler). The final step into 0 is ``final``, where k-diffusion 0.1.1 takes the
    Adams step all the way to sigma = 0 and later versions return D.
    """
    _check("lms", order, 4, final)
    return _adams(grid, x, order, final, _lms_weights)


@register("deis", order=3)
def deis(
    grid: SamplerGrid,
    x: Tensor,
    *,
    order: int = 3,
    lower_order_final: bool = True,
    final: str = "tau",
) -> Tensor:
    """DEIS tAB: x' = x + sum_j eps_j int_s^s' l_j(log sigma) dsigma (Zhang & Chen 2023).

    The exponential integrator with eps extrapolated by a Lagrange polynomial in time. In x = x0 +
    sigma eps coordinates the exponential integrator of any VP/VE process is x' = x + int eps
    dsigma. The time of the polynomial is t = log sigma (= -log-SNR / 2, diffusers' DEIS "logrho"):
    it needs no process, and int e^t t^m dt is closed-form, so the coefficients are exact (the
    paper's t of a VP-linear schedule needs the process and numerical quadrature). Orders 1..3
    (order 1 is DDIM); ``lower_order_final`` as diffusers' DEIS (measured better on uniform-t
    grids).
    """
    _check("deis", order, 3, final)
    return _adams(grid, x, order, final, _deis_weights, lower_order_final)


@register("ipndm", order=4)
def ipndm(grid: SamplerGrid, x: Tensor, *, order: int = 4, final: str = "tau") -> Tensor:
    """iPNDM: x' = x + (s' - s) sum_j b_j eps_j, fixed Adams-Bashforth b (Zhang & Chen 2023).

    b = (55, -59, 37, -9) / 24 for order 4, on eps in sigma, lower orders at start-up (k-diffusion /
    ComfyUI sample_ipndm). The fixed weights are the Adams-Bashforth weights of equal steps in
    sigma, where the method has order ``order`` (1..4). On grids whose steps in sigma vary
    (exponential, Karras) they no longer integrate a linear eps exactly and the method is second
    order asymptotically, though accurate at few steps; ``lms`` is the variable-step method.
    ComfyUI's ipndm_v is not offered: its order-3 and -4 weights are not the variable-step
    Adams-Bashforth weights (exact for linear eps only) and diverge when step ratios vary strongly.
    """
    _check("ipndm", order, 4, final)
    return _adams(grid, x, order, final, _ipndm_weights)


# --------------------------------------------------------------------------------------------
# UniPC: multistep data prediction with the UniC corrector


def _unipc_coefficients(
    sigmas: Sequence[float], i: int, p: int, variant: str
) -> tuple[float, list[float], list[float]]:
    """UniP-p and UniC-p on s_i -> s_{i+1} in data prediction, as (ratio, c, d): with m_0 = D at s_i
    and m_k = D at s_{i-k},

        predictor  x' = ratio x + sum_k c[k] m_k
        corrector  x'_c = x' + d[0] m' + sum_k d[k+1] m_k,  m' = D(x', s_{i+1}).

    h = log(s_i / s_{i+1}), r_k = log(s_i / s_{i-k}) / h (k = 1..p-1, negative), B = -h (bh1) or
    expm1(-h) (bh2), b_j = j! (-h) phi_{j+1}(-h) / B. UniP: x' = (s_{i+1}/s_i) x - expm1(-h) m_0 - B
    sum_k rho_k (m_k - m_0) / r_k with sum_k rho_k r_k^(j-1) = b_j for j = 1..p-1 (rho = 1/2 at p =
    2, as diffusers and the paper's code); UniC adds the node r_p = 1 with m' and solves j = 1..p
    (rho = 1/2 at p = 1). These Vandermonde systems are quadratures: rho = _quadrature(r, b).
    """
    s, nxt = sigmas[i], sigmas[i + 1]
    h = math.log(s / nxt)
    bh = -h if variant == "bh1" else math.expm1(-h)
    phi = phis(p + 1, -h)
    b = [math.factorial(j) * -h * phi[j] / bh for j in range(1, p + 1)]
    r = [math.log(s / sigmas[i - k]) / h for k in range(1, p)]
    rho_p = [] if p == 1 else [0.5] if p == 2 else _quadrature(r, b[: p - 1])
    rho_c = [0.5] if p == 1 else _quadrature([*r, 1.0], b)
    c = [-bh * rk / rk_node for rk, rk_node in zip(rho_p, r)]
    c.insert(0, -math.expm1(-h) - sum(c))
    d = [-bh * (rc - rk) / rk_node for rc, rk, rk_node in zip(rho_c, rho_p, r)]
    d.insert(0, bh * rho_c[-1] - sum(d))  # m_0
    d.insert(0, -bh * rho_c[-1])  # m'
    return nxt / s, c, d


def _axpy(a: float, u: list[float], v: list[float]) -> list[float]:
    """a u + v for coefficient lists of different lengths (missing entries are 0)."""
    n = max(len(u), len(v))
    return [a * (u[k] if k < len(u) else 0.0) + (v[k] if k < len(v) else 0.0) for k in range(n)]


@functools.lru_cache(maxsize=256)
def _unipc_table(
    sigmas: tuple[float, ...], order: int, variant: str, corrector: bool, lower_order_final: bool
) -> tuple[tuple[float, tuple[float, ...], tuple[float, ...]], ...]:
    """Per step but a final one into 0: (ratio, predictor coefficients with the previous step's
    corrector folded in, this step's corrector coefficients), once per grid and options."""
    steps = len(sigmas) - 1 - (sigmas[-1] == 0)
    table, pending = [], []
    for i in range(steps):
        p = _step_order(sigmas, i, order, lower_order_final)
        ratio, c, d = _unipc_coefficients(sigmas, i, p, variant)
        # the corrected x_c = x + sum pending m enters the predictor only as ratio x_c: fold it in
        table.append((ratio, tuple(_axpy(ratio, pending, c)), tuple(d if corrector else [])))
        pending = d if corrector else []
    return tuple(table)


@register("unipc", order=4)
def unipc(
    grid: SamplerGrid,
    x: Tensor,
    *,
    order: int = 3,
    variant: str = "bh2",
    corrector: bool = True,
    lower_order_final: bool = True,
    final: str = "tau",
) -> Tensor:
    """UniPC: x' = (s'/s) x - expm1(-h) D - B(h) sum_k rho_k dD_k / r_k, + UniC (Zhao et al. 2023).

    UniP-p in data prediction (DPM-Solver++ form, diffusers' predict_x0=True), dD_k = D_{i-k} - D_i,
    then the UniC-p corrector re-solves for rho with D(x'). Options: ``order`` p in 1..3;
    ``variant`` "bh1" (B = h) or "bh2" (B = e^h - 1); ``corrector`` turns UniC on. UniC uses the
    evaluation D(x') that the next step needs anyway, so it costs no NFE and raises the order to p +
    1; the history keeps D(x') (taken before the correction) as diffusers does. After the last step
    there is no evaluation, so no corrector; a final step into 0 gets the corrected x with D(x').
    Defaults (order 3, bh2, lower_order_final) were the most accurate on the exact-mixture
    benchmarks at 10-20 NFE over Karras, exponential and uniform-t grids: order 2 wins at <= 10 NFE
    on Karras grids, bh1 loses on uniform-t grids, and lower_order_final halves the error of order 3
    on uniform-t grids. Matches diffusers' UniPCMultistepScheduler to float64 rounding with
    final="denoised" and the same lower_order_final (final_sigmas_type="zero"), or on grids ending
    above 0 with lower_order_final=False there (final_sigmas_type="sigma_min").
    """
    _check("unipc", order, 3, final)
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"unipc: variant must be 'bh1' or 'bh2', got {variant!r}")
    table = _unipc_table(tuple(grid.sigmas), order, variant, corrector, lower_order_final)
    ms: list[Tensor] = []  # data predictions, newest first
    pending: tuple[float, ...] = ()  # UniC coefficients on ms for the interval just taken
    for i in range(grid.steps):
        m = grid.denoise(x, i)
        ms.insert(0, m)
        if grid[i + 1] == 0:
            return final_step(combine(x, 1.0, pending, ms) if pending else x, m, final, grid[i])
        ratio, c, pending = table[i]
        x = combine(x, ratio, c, ms)
        del ms[order:]
    return x
