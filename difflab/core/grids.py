"""Step grids: the noise levels sigma_0 > sigma_1 > ... > sigma_n = 0 that a sampler walks (DESIGN.md).

Every grid is a plain function with one signature::

    grid(steps, sigma_min=None, sigma_max=None, *, process=None, **options) -> Tensor

It returns a float64 1-D tensor of ``steps + 1`` strictly decreasing noise levels sigma_ve ending
with 0; with ``append_zero=False`` it returns the ``steps`` levels without the final 0. Endpoints left
as None come from ``process.sigma_min`` / ``process.sigma_max``. Each docstring gives the grid's
formula, its source, and where it starts and stops.

Conventions shared by all grids:

- Grids built in a time coordinate (``uniform_t``, ``normal``, ``sgm_uniform``, ``beta``, ``flow``,
  ``kl_optimal``, ``linear_quadratic``) reach sigma = inf exactly (zero terminal SNR, flow processes).
  Grids built in sigma itself (``karras``, ``exponential``, ``polyexponential``, ``vp``) need a finite
  sigma_max and say so.
- Endpoint grids (``karras``, ``exponential``, ``polyexponential``, ``uniform_t``, ``vp``, ``flow``,
  ``kl_optimal``) hit ``sigma_max`` and ``sigma_min`` exactly. When ``sigma_min`` is 0 their own last
  level is that 0 and no second 0 is appended, so the length stays ``steps + 1`` (ComfyUI's rule).
  The others start at sigma_max but stop above sigma_min by design, or follow their table.
- Grids that take their levels from a table (``simple``, ``ddim_uniform``, ``uniform_t`` with
  ``spacing``, ``ays``, ``explicit``) accept no sigma_min / sigma_max: passing one is an error.
- A grid never returns repeated levels: where its construction would tie it raises a ``ValueError``
  that says how many distinct levels it can offer.

Look grids up by name with :func:`get`; :func:`available` lists the names.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from difflab.core.processes import VE, Flow, Process, Trig, VPLinear
from difflab.core.tensors import as_tensor, check_name, unknown_name

__all__ = [
    "Grid",
    "available",
    "ays",
    "beta",
    "betainc",
    "betaincinv",
    "ddim_uniform",
    "explicit",
    "exponential",
    "flow",
    "get",
    "karras",
    "kl_optimal",
    "laplace",
    "linear_quadratic",
    "polyexponential",
    "sgm_uniform",
    "simple",
    "uniform_t",
    "vp",
]

_F64 = torch.float64
# (ramp in [0, 1], sigma_min, sigma_max) -> levels: ramp 0 is sigma_max, ramp 1 is sigma_min
Levels = Callable[[Tensor, float, float], Tensor]
_FLOW = Flow(t_min=0.0, t_max=1.0)  # flow time tau = sigma / (1 + sigma)
_TRIG = Trig(t_min=0.0, t_max=1.0)  # t = 2/pi atan(sigma)


class Grid(Protocol):
    """The signature every step grid has."""

    def __call__(
        self,
        steps: int,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        *,
        process: Process | None = None,
        **options: Any,
    ) -> Tensor: ...


# --------------------------------------------------------------------------------------------
# shared helpers: validate, resolve endpoints, finish the grid


def _check_steps(steps: int) -> int:
    try:
        n = operator.index(steps)
    except TypeError:
        n = None
    if n is None or isinstance(steps, bool) or n < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return n


def _endpoints(
    name: str,
    sigma_min: float | None,
    sigma_max: float | None,
    process: Process | None,
    *,
    default: Process | None = None,
    uses_min: bool = True,
) -> tuple[float, float]:
    """(sigma_min, sigma_max), given ones first, then the process's, then the grid's own default."""
    if not uses_min and sigma_min is not None:
        raise ValueError(f"grid {name!r} does not use sigma_min; leave it as None")
    source = process if process is not None else default
    missing = sigma_max is None or (uses_min and sigma_min is None)
    if missing and source is None:
        need = "sigma_min and sigma_max" if uses_min else "sigma_max"
        raise ValueError(f"grid {name!r} needs {need}, or a process to take them from")
    lo = float(source.sigma_min if sigma_min is None else sigma_min) if uses_min else 0.0
    hi = float(source.sigma_max if sigma_max is None else sigma_max)
    if not 0 <= lo < math.inf:
        raise ValueError(f"sigma_min must be finite and >= 0, got {lo}")
    if not lo < hi:
        raise ValueError(f"sigma_min ({lo}) must be < sigma_max ({hi})")
    return lo, hi


def _require(
    name: str, lo: float, hi: float, *, finite: bool = False, positive: bool = False
) -> None:
    if finite and math.isinf(hi):
        raise ValueError(
            f"grid {name!r} needs a finite sigma_max, got inf (as from a zero-terminal-SNR or flow process): "
            "pass a finite sigma_max or use a grid built in process time "
            "(uniform_t, flow, kl_optimal, linear_quadratic)"
        )
    if positive and lo == 0:
        raise ValueError(f"grid {name!r} is built in log sigma and needs sigma_min > 0, got 0")


def _no_endpoints(name: str, sigma_min: float | None, sigma_max: float | None, source: str) -> None:
    if sigma_min is not None or sigma_max is not None:
        raise ValueError(
            f"grid {name!r} takes its levels from {source}; leave sigma_min and sigma_max as None"
        )


def _need_process(name: str, process: Process | None) -> Process:
    if process is None:
        raise ValueError(f"grid {name!r} is built in the process's time t; pass process=...")
    return process


def _finish(what: str, sigmas: Tensor, append_zero: bool) -> Tensor:
    """Append the final 0 (unless the grid already ends in 0) and insist on strict decrease."""
    sigmas = sigmas.to(_F64)
    if append_zero and sigmas[-1] != 0:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    if bool(sigmas.isnan().any()):
        raise ValueError(f"{what} produced NaN at index {int(sigmas.isnan().nonzero()[0])}")
    bad = ~(sigmas[1:] < sigmas[:-1])
    if bool(bad.any()):
        i = int(bad.nonzero()[0]) + 1
        a, b = float(sigmas[i - 1]), float(sigmas[i])
        if a == b:
            distinct = int(torch.unique(sigmas).numel())
            raise ValueError(
                f"{what} is not strictly decreasing at index {i}: the level {b} repeats; with these "
                f"settings it offers only {distinct} distinct noise levels for {len(sigmas)} grid "
                "points, use fewer steps"
            )
        raise ValueError(f"{what} is not strictly decreasing at index {i} ({a} -> {b})")
    return sigmas


def _span(
    name: str, steps: int, lo: float, hi: float, append_zero: bool, levels: Levels, pin: bool = True
) -> Tensor:
    """``steps`` levels at ramp = linspace(0, 1) from sigma_max to sigma_min, endpoints pinned exactly.

    With sigma_min = 0 a pinned grid takes one more point and its own last level is the final 0.
    """
    n = steps + bool(pin and append_zero and lo == 0)
    sigmas = levels(torch.linspace(0, 1, n, dtype=_F64), lo, hi).to(_F64)
    if pin:
        sigmas[0] = hi
        if n > 1:
            sigmas[-1] = lo
    return _finish(f"grid {name!r}", sigmas, append_zero)


def _in_time(process: Process) -> Levels:
    """Levels linear in the process's time t, from t(sigma_max) (ramp 0) to t(sigma_min) (ramp 1)."""

    def levels(ramp: Tensor, lo: float, hi: float) -> Tensor:
        t_hi, t_lo = (process.t_of(as_tensor(s)).to(_F64) for s in (hi, lo))
        return process.sigma_ve(t_hi + ramp * (t_lo - t_hi)).to(_F64)

    return levels


# --------------------------------------------------------------------------------------------
# regularized incomplete beta function and its inverse (for the beta grid; no scipy at runtime)


def betainc(a: float, b: float, x: Tensor) -> Tensor:
    """Regularized incomplete beta I_x(a, b), float64, by Lentz's continued fraction (Numerical
    Recipes 6.4), using I_x(a, b) = 1 - I_{1-x}(b, a) where the fraction converges slowly."""
    x = as_tensor(x, _F64)
    flip = x > (a + 1) / (a + b + 2)
    p = torch.where(flip, torch.full_like(x, b), torch.full_like(x, a))
    q = torch.where(flip, torch.full_like(x, a), torch.full_like(x, b))
    z = torch.where(flip, 1 - x, x)
    tiny = 1e-300

    def guard(v: Tensor) -> Tensor:
        return torch.where(v.abs() < tiny, torch.full_like(v, tiny), v)

    c = torch.ones_like(z)
    d = 1 / guard(1 - (p + q) * z / (p + 1))
    h = d
    for m in range(1, 1000):
        for num in (
            m * (q - m) * z / ((p + 2 * m - 1) * (p + 2 * m)),
            -(p + m) * (p + q + m) * z / ((p + 2 * m) * (p + 2 * m + 1)),
        ):
            d = 1 / guard(1 + num * d)
            c = guard(1 + num / c)
            h = h * d * c
        if bool(((d * c - 1).abs() < 1e-15).all()):
            break
    log_front = (
        torch.lgamma(p + q)
        - torch.lgamma(p)
        - torch.lgamma(q)
        + p * torch.log(z)
        + q * torch.log1p(-z)
    )
    i = torch.exp(log_front) * h / p
    return torch.where(flip, 1 - i, i)


def betaincinv(a: float, b: float, y: Tensor) -> Tensor:
    """Inverse of :func:`betainc` in x, i.e. the quantile (ppf) of Beta(a, b) at y: Newton's method
    from the tail approximations I_x ~ x^a / (a w), 1 - I_x ~ (1-x)^b / (b w) (Numerical Recipes
    3rd ed. 6.14), kept inside a bisection bracket, to ~1e-13 relative accuracy."""
    if not (a > 0 and b > 0):
        raise ValueError(f"Beta distribution parameters must be > 0, got alpha={a}, beta={b}")
    y = as_tensor(y, _F64)
    log_norm = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    ta = math.exp(a * math.log(a / (a + b)) - math.log(a))
    tb = math.exp(b * math.log(b / (a + b)) - math.log(b))
    w = ta + tb
    x = torch.where(y < ta / w, (a * w * y) ** (1 / a), 1 - (b * w * (1 - y)) ** (1 / b))
    x = torch.where(y <= 0, 0.0, torch.where(y >= 1, 1.0, x))
    lo, hi = torch.zeros_like(y), torch.ones_like(y)
    for _ in range(100):
        f = betainc(a, b, x) - y
        lo, hi = torch.where(f < 0, x, lo), torch.where(f > 0, x, hi)
        pdf = torch.exp((a - 1) * torch.log(x) + (b - 1) * torch.log1p(-x) - log_norm)
        step = x - f / pdf
        new = torch.where((step >= lo) & (step <= hi), step, (lo + hi) / 2)  # NaN -> bisect
        new = torch.where(f == 0, x, new)
        done = bool(((new - x).abs() <= 1e-13 * new).all())  # beyond this, betainc's rounding
        x = new
        if done:
            break
    return x


# --------------------------------------------------------------------------------------------
# grids built in sigma


def karras(
    steps: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    *,
    process: Process | None = None,
    rho: float = 7.0,
    append_zero: bool = True,
) -> Tensor:
    """sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.

    Karras et al. 2022, "Elucidating the design space of diffusion-based generative models", eq. 5
    (k-diffusion ``get_sigmas_karras``). Needs a finite sigma_max.
    """
    steps = _check_steps(steps)
    lo, hi = _endpoints("karras", sigma_min, sigma_max, process)
    _require("karras", lo, hi, finite=True)
    if not rho > 0:
        raise ValueError(f"karras rho must be > 0, got {rho}")

    def levels(r: Tensor, lo: float, hi: float) -> Tensor:
        a, b = hi ** (1 / rho), lo ** (1 / rho)
        return (a + r * (b - a)) ** rho

    return _span("karras", steps, lo, hi, append_zero, levels)


def exponential(
    steps: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    *,
    process: Process | None = None,
    append_zero: bool = True,
) -> Tensor:
    """log sigma_i = log sigma_max + i/(n-1) (log sigma_min - log sigma_max): uniform in log sigma.

    k-diffusion ``get_sigmas_exponential``. Since log-SNR = -2 log sigma this is also the grid uniform
    in log-SNR (the alias ``logsnr``; DPM-Solver's "logSNR" step spacing, Lu et al. 2022). Needs a
    finite sigma_max and sigma_min > 0.
    """
    steps = _check_steps(steps)
    lo, hi = _endpoints("exponential", sigma_min, sigma_max, process)
    _require("exponential", lo, hi, finite=True, positive=True)

    def levels(r: Tensor, lo: float, hi: float) -> Tensor:
        return torch.exp(math.log(hi) + r * (math.log(lo) - math.log(hi)))

    return _span("exponential", steps, lo, hi, append_zero, levels)


def polyexponential(
    steps: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    *,
    process: Process | None = None,
    rho: float = 1.0,
    append_zero: bool = True,
) -> Tensor:
    """log sigma_i = log sigma_min + (1 - i/(n-1))^rho (log sigma_max - log sigma_min).

    k-diffusion ``get_sigmas_polyexponential`` (Crowson); rho = 1 is :func:`exponential`. Needs a
    finite sigma_max and sigma_min > 0.
    """
    steps = _check_steps(steps)
    lo, hi = _endpoints("polyexponential", sigma_min, sigma_max, process)
    _require("polyexponential", lo, hi, finite=True, positive=True)
    if not rho > 0:
        raise ValueError(f"polyexponential rho must be > 0, got {rho}")

    def levels(r: Tensor, lo: float, hi: float) -> Tensor:
        return torch.exp((1 - r) ** rho * (math.log(hi) - math.log(lo)) + math.log(lo))

    return _span("polyexponential", steps, lo, hi, append_zero, levels)


def laplace(
    steps: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    *,
    process: Process | None = None,
    mu: float = 0.0,
    beta: float = 0.5,
    append_zero: bool = True,
) -> Tensor:
    """sigma_i = clamp(exp(mu - beta sgn(1/2 - x) log(1 - 2|1/2 - x| + 1e-5)), sigma_min, sigma_max),
    x = i/(n-1): log sigma at the quantiles of a Laplace(mu, beta) distribution.

    Hang et al. 2024, "Improved noise schedule for diffusion training" (ComfyUI
    ``get_sigmas_laplace``). Hits sigma_max only when sigma_max <= exp(mu + beta ln 1e5) and
    sigma_min only when sigma_min >= exp(mu - beta ln 1e5); the clamp ties levels at large step
    counts, which raises.
    """
    steps = _check_steps(steps)
    lo, hi = _endpoints("laplace", sigma_min, sigma_max, process)
    if not beta > 0:
        raise ValueError(f"laplace beta must be > 0, got {beta}")

    def levels(x: Tensor, lo: float, hi: float) -> Tensor:
        lam = mu - beta * torch.sign(0.5 - x) * torch.log(1 - 2 * (0.5 - x).abs() + 1e-5)
        return lam.exp().clamp(lo, hi)

    return _span("laplace", steps, lo, hi, append_zero, levels, pin=False)


# --------------------------------------------------------------------------------------------
# grids built in a time coordinate


def uniform_t(
    steps: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    *,
    process: Process | None = None,
    spacing: str | None = None,
    steps_offset: int = 0,
    append_zero: bool = True,
) -> Tensor:
    """t_i = t(sigma_max) + i/(n-1) (t(sigma_min) - t(sigma_max)), sigma_i = process.sigma_ve(t_i).

    Uniform in the process's own time (DDPM, Ho et al. 2020; DDIM, Song et al. 2021); ComfyUI's
    ``normal`` scheduler (alias ``normal``). Needs a process.

    ``spacing`` ("linspace", "leading", "trailing", discrete processes with a ``sigmas`` table only)
    picks integer timesteps exactly as diffusers' DDIM scheduler does (Lin et al. 2024, table 2),
    N train timesteps, n steps:

    - linspace: round(linspace(0, N-1, n)) reversed;
    - leading: arange(n) * (N // n) reversed, + ``steps_offset``;
    - trailing: round(arange(N, 0, -N/n)) - 1 (numpy's arange arithmetic; diffusers' own arange
      yields a spurious (n+1)-th timestep -1 for some n, e.g. N = 1000, n = 61, which is dropped);

    and returns the table's exact sigma at those timesteps. The endpoints then follow from the table.
    (diffusers' Euler-type schedulers keep linspace timesteps fractional, which is ``spacing=None``
    up to how sigma is interpolated between table rows.)
    """
    process = _need_process("uniform_t", process)
    steps = _check_steps(steps)
    if spacing is None:
        lo, hi = _endpoints("uniform_t", sigma_min, sigma_max, process)
        return _span("uniform_t", steps, lo, hi, append_zero, _in_time(process))
    name = f"uniform_t (spacing={spacing!r})"
    table = _table(name, process, sigma_min, sigma_max)
    n_train = len(table)
    if steps > n_train:
        raise ValueError(
            f"grid {name!r} offers at most {n_train} distinct levels, got steps={steps}"
        )
    i = torch.arange(steps, dtype=_F64)
    if spacing == "linspace":  # numpy.linspace(0, N-1, n) computes i * step, then sets the stop
        t = i * ((n_train - 1) / max(steps - 1, 1))
        t[-1] = t[-1] if steps == 1 else n_train - 1
        t = t.round().flip(0)
    elif spacing == "leading":
        t = (i * (n_train // steps)).flip(0) + operator.index(steps_offset)
        if not 0 <= int(t[-1]) <= int(t[0]) < n_train:
            raise ValueError(
                f"grid {name!r}: steps_offset={steps_offset} puts timestep {int(t[0])} outside the "
                f"table 0..{n_train - 1}"
            )
    elif spacing == "trailing":  # numpy.arange(N, 0, -N/n) fills N + i * ((N - N/n) - N)
        t = (n_train + i * ((n_train - n_train / steps) - n_train)).round() - 1
    else:
        raise unknown_name("timestep spacing", spacing, ["leading", "linspace", "trailing"])
    return _finish(f"grid {name!r}", table[t.long()], append_zero)


def sgm_uniform(
    steps: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    *,
    process: Process | None = None,
    append_zero: bool = True,
) -> Tensor:
    """t_i = t(sigma_max) + i/n (t(sigma_min) - t(sigma_max)), i = 0..n-1: n + 1 uniform times with
    the last dropped, so the grid stops one time step above sigma_min.

    Stability AI's sgm "uniform" discretization (ComfyUI ``normal_scheduler(sgm=True)``). Needs a
    process; works on any.
    """
    process = _need_process("sgm_uniform", process)
    steps = _check_steps(steps)
    lo, hi = _endpoints("sgm_uniform", sigma_min, sigma_max, process)
    sigmas = _in_time(process)(torch.linspace(0, 1, steps + 1, dtype=_F64)[:-1], lo, hi)
    sigmas[0] = hi
    return _finish("grid 'sgm_uniform'", sigmas, append_zero)


def beta(
    steps: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    *,
    process: Process | None = None,
    alpha: float = 0.6,
    beta: float = 0.6,
    append_zero: bool = True,
) -> Tensor:
    """t_i = t(sigma_min) + F^-1(1 - i/n) (t(sigma_max) - t(sigma_min)), i = 0..n-1, with F the CDF
    of Beta(alpha, beta): time steps dense at both ends.

    Lee et al. 2024, "Beta sampling is all you need" (ComfyUI ``beta_scheduler``, which also rounds
    t to the integer timesteps of the table and drops repeats; here t stays continuous, so the grid
    always has ``steps`` levels). Time is the process's; without a process, log sigma between the
    endpoints. Starts at sigma_max; stops at the 1/n quantile, above sigma_min.
    """
    steps = _check_steps(steps)
    lo, hi = _endpoints("beta", sigma_min, sigma_max, process)
    if process is None:
        _require("beta", lo, hi, finite=True, positive=True)
    time = process if process is not None else VE(lo, hi)  # VE time is uniform in log sigma
    # 1 - F^-1_{alpha,beta}(1 - q) = F^-1_{beta,alpha}(q): the ramp from sigma_max (0) to sigma_min (1)
    ramp = betaincinv(beta, alpha, torch.arange(steps, dtype=_F64) / steps)
    sigmas = _in_time(time)(ramp, lo, hi)
    sigmas[0] = hi
    return _finish("grid 'beta'", sigmas, append_zero)


def vp(
    steps: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    *,
    process: Process | None = None,
    beta_d: float = 19.9,
    beta_min: float = 0.1,
    eps_s: float = 1e-3,
    append_zero: bool = True,
) -> Tensor:
    """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) at t uniform in [t(sigma_min), t(sigma_max)].

    Uniform time of the continuous VP SDE with linear beta (Song et al. 2021); k-diffusion
    ``get_sigmas_vp``. Without endpoints or a process it spans t = 1 .. eps_s, which is exactly
    ``get_sigmas_vp(steps, beta_d, beta_min, eps_s)``. Needs a finite sigma_max.
    """
    steps = _check_steps(steps)
    time = VPLinear(beta_min=beta_min, beta_max=beta_min + beta_d, t_min=eps_s, t_max=1.0)
    lo, hi = _endpoints("vp", sigma_min, sigma_max, process, default=time)
    _require("vp", lo, hi, finite=True)
    return _span("vp", steps, lo, hi, append_zero, _in_time(time))


def flow(
    steps: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    *,
    process: Process | None = None,
    shift: float | None = None,
    append_zero: bool = True,
) -> Tensor:
    """sigma_i = shift * tau_i / (1 - tau_i), tau uniform between tau(sigma_max / shift) and
    tau(sigma_min / shift), tau(s) = s / (1 + s) the flow time.

    Rectified-flow time grid with SD3's resolution shift (Esser et al. 2024, sec. 5.3.2; alias
    ``sd3``): t -> shift t / (1 + (shift - 1) t), which is sigma -> shift * sigma, so
    ``flow(n, a, b, shift=s) == s * flow(n, a / s, b / s, shift=1)``. The shifted grid itself hits
    sigma_max and sigma_min exactly. (diffusers' FlowMatchEulerDiscreteScheduler spaces its grid
    between the already shifted training range and then shifts it again, so its lowest level is
    shifted twice.) ``shift`` defaults to ``process.shift`` for a :class:`Flow` process, else 1.
    sigma_max may be inf.
    """
    steps = _check_steps(steps)
    if shift is None:
        shift = process.shift if isinstance(process, Flow) else 1.0
    if not shift > 0:
        raise ValueError(f"flow shift must be > 0, got {shift}")
    lo, hi = _endpoints("flow", sigma_min, sigma_max, process)
    unshifted = _in_time(_FLOW)

    def levels(r: Tensor, lo: float, hi: float) -> Tensor:
        return shift * unshifted(r, lo / shift, hi / shift)

    return _span("flow", steps, lo, hi, append_zero, levels)


def kl_optimal(
    steps: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    *,
    process: Process | None = None,
    append_zero: bool = True,
) -> Tensor:
    """sigma_i = tan(atan(sigma_max) + i/(n-1) (atan(sigma_min) - atan(sigma_max))): uniform in atan.

    The KL-optimal grid of Sabour et al. 2024, "Align your steps" (ComfyUI ``kl_optimal_scheduler``),
    i.e. uniform time of the trigonometric interpolant. sigma_max may be inf.
    """
    steps = _check_steps(steps)
    lo, hi = _endpoints("kl_optimal", sigma_min, sigma_max, process)
    return _span("kl_optimal", steps, lo, hi, append_zero, _in_time(_TRIG))


def linear_quadratic(
    steps: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    *,
    process: Process | None = None,
    threshold_noise: float = 0.025,
    linear_steps: int | None = None,
    append_zero: bool = True,
) -> Tensor:
    """Flow times u_i = 1 - i * thr / L for i < L, then 1 - (q i^2 + l i + c) up to u_n = 0, the
    quadratic part joining the linear part at thr (value and slope) and ending at 1.

    Genmo's Mochi linear-quadratic schedule (ComfyUI ``linear_quadratic_schedule``, thr =
    ``threshold_noise`` = 0.025, L = ``linear_steps`` = steps // 2). u is flow time relative to the
    flow time of sigma_max: sigma_i = t_i / (1 - t_i) with t_i = u_i * sigma_max / (1 + sigma_max), so
    the grid starts at sigma_max (inf allowed). It does not use sigma_min.
    """
    steps = _check_steps(steps)
    _, hi = _endpoints("linear_quadratic", sigma_min, sigma_max, process, uses_min=False)
    i = torch.arange(steps, dtype=_F64)
    if steps == 1:
        u = torch.ones(1, dtype=_F64)
    else:
        n_lin = steps // 2 if linear_steps is None else operator.index(linear_steps)
        if not 1 <= n_lin < steps:
            raise ValueError(f"linear_steps must be in 1..{steps - 1}, got {n_lin}")
        if not 0 < threshold_noise < 1:
            raise ValueError(f"threshold_noise must be in (0, 1), got {threshold_noise}")
        n_quad = steps - n_lin
        gap = n_lin - threshold_noise * steps
        q = gap / (n_lin * n_quad**2)
        lin = threshold_noise / n_lin - 2 * gap / n_quad**2
        quad = q * i**2 + lin * i + q * n_lin**2
        u = 1 - torch.where(i < n_lin, i * threshold_noise / n_lin, quad)
    sigmas = _FLOW.sigma_ve(u * _FLOW.t_of(as_tensor(hi)))
    sigmas[0] = hi
    return _finish("grid 'linear_quadratic'", sigmas, append_zero)


# --------------------------------------------------------------------------------------------
# grids picked from a table


def _table(
    name: str, process: Process | None, sigma_min: float | None, sigma_max: float | None
) -> Tensor:
    _no_endpoints(name, sigma_min, sigma_max, "the process's sigma table")
    table = getattr(process, "sigmas", None)
    if table is None:
        raise ValueError(
            f"grid {name!r} picks levels from a discrete process's sigma table (VPDiscrete); "
            f"got process={process!r}"
        )
    return as_tensor(table, _F64)


def simple(
    steps: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    *,
    process: Process | None = None,
    append_zero: bool = True,
) -> Tensor:
    """sigma_i = table[N - 1 - floor(i N / n)], i = 0..n-1: every (N/n)-th entry from the top.

    ComfyUI ``simple_scheduler`` on a discrete process's sigma table (N entries). Starts at the
    table's top; stops above its bottom. At most N steps.
    """
    steps = _check_steps(steps)
    table = _table("simple", process, sigma_min, sigma_max)
    if steps > len(table):
        raise ValueError(f"grid 'simple' offers at most {len(table)} distinct levels, got {steps}")
    t = len(table) - 1 - (torch.arange(steps, dtype=_F64) * (len(table) / steps)).floor()
    return _finish("grid 'simple'", table[t.long()], append_zero)


def ddim_uniform(
    steps: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    *,
    process: Process | None = None,
    append_zero: bool = True,
) -> Tensor:
    """sigma_i = table[1 + c (n - 1 - i)], c = N // n: DDIM's "uniform" timestep skip.

    Song et al. 2021 (DDIM) as in latent diffusion and ComfyUI ``ddim_scheduler``. Those keep adding
    timesteps 1 + c k while they are < N, which gives more than n levels when c does not divide N - 1
    (e.g. N = 1000, n = 7); here exactly the first n, from timestep 1 up, are kept. At most N - 1 steps.
    """
    steps = _check_steps(steps)
    table = _table("ddim_uniform", process, sigma_min, sigma_max)
    most = len(table) - 1
    if steps > most:
        raise ValueError(f"grid 'ddim_uniform' offers at most {most} distinct levels, got {steps}")
    c = max(len(table) // steps, 1)
    t = 1 + c * torch.arange(steps - 1, -1, -1)
    return _finish("grid 'ddim_uniform'", table[t], append_zero)


# Align Your Steps 10-step grids (Sabour et al. 2024; NVIDIA's published values, as in ComfyUI)
_AYS: dict[str, tuple[float, ...]] = {
    "sd15": (14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
             0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582),
    "sdxl": (14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
             0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582),
    "svd": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
}  # fmt: skip


def ays(
    steps: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    *,
    process: Process | None = None,
    model: str = "sd15",
    append_zero: bool = True,
) -> Tensor:
    """Align Your Steps (Sabour et al. 2024): NVIDIA's optimized 10-step grid for ``model`` ("sd15",
    "sdxl", "svd"), resampled to steps + 1 points by linear interpolation of log sigma over
    linspace(0, 1) (AYS reference ``loglinear_interp``); the last point is replaced by 0, as in the
    reference and ComfyUI. Ignores ``process``; stops above the published sigma_min.
    """
    steps = _check_steps(steps)
    _no_endpoints("ays", sigma_min, sigma_max, "the published Align Your Steps levels")
    check_name("Align Your Steps model", model, _AYS)
    levels = np.asarray(_AYS[model], dtype=np.float64)
    if steps + 1 != len(levels):
        xs = np.linspace(0, 1, len(levels))
        log_levels = np.interp(np.linspace(0, 1, steps + 1), xs, np.log(levels[::-1]))
        levels = np.exp(log_levels)[::-1]
    return _finish("grid 'ays'", torch.tensor(levels[:steps].copy(), dtype=_F64), append_zero)


def explicit(
    steps: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    *,
    process: Process | None = None,
    sigmas: Sequence[float] | Tensor | None = None,
    append_zero: bool = True,
) -> Tensor:
    """The given ``sigmas``, checked (>= 0, strictly decreasing; inf allowed first), with 0 appended
    when missing. ``steps`` must match: len(sigmas) - 1 if they end in 0, else len(sigmas)."""
    steps = _check_steps(steps)
    _no_endpoints("explicit", sigma_min, sigma_max, "sigmas=[...]")
    if sigmas is None:
        raise ValueError("grid 'explicit' needs sigmas=[...]")
    values = torch.as_tensor(sigmas, dtype=_F64, device="cpu").clone()
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(
            f"explicit sigmas must be a non-empty 1-D list, got shape {tuple(values.shape)}"
        )
    bad = ~(values >= 0)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"explicit sigmas must be >= 0 and not NaN; index {i} is {float(values[i])}"
        )
    out = _finish("explicit sigmas", values, append_zero)
    if len(out) != steps + append_zero:
        raise ValueError(f"explicit sigmas make {len(out) - append_zero} steps, but steps={steps}")
    return out


# --------------------------------------------------------------------------------------------
# registry

_GRIDS: dict[str, Callable[..., Tensor]] = {
    fn.__name__: fn
    for fn in (
        karras, exponential, polyexponential, laplace, uniform_t, sgm_uniform, beta, vp, flow,
        kl_optimal, linear_quadratic, simple, ddim_uniform, ays, explicit,
    )
}  # fmt: skip
_ALIASES = {"logsnr": "exponential", "sd3": "flow", "normal": "uniform_t"}


def available() -> list[str]:
    """Names accepted by :func:`get` (aliases included)."""
    return sorted([*_GRIDS, *_ALIASES])


def get(name: str) -> Grid:
    """The step-grid function called ``name``, e.g. ``get("karras")(20, process=p)``."""
    key = _ALIASES.get(name, name)
    if key not in _GRIDS:
        raise unknown_name("step grid", name, available())
    return _GRIDS[key]
