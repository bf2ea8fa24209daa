"""Optimized step grids: the sigma grid that minimizes a sampler's error for a model and NFE budget.

Three searches share one machinery (:class:`_Problem`): a fixed calibration batch of starting noises,
a high-NFE reference endpoint for each, and the sampler run on a candidate grid.

- ``optimize(..., method="direct")``: min_grid RMSE(sampler(x, grid), reference(x)) over monotone grids
  sigma_max -> sigma_last >= sigma_min, parameterized by the cumulative softmax of free logits in
  log sigma, coarse to fine: first the range of each fixed grid (where it stops above sigma_min),
  then every level.
- ``optimize(..., method="ays")``: Align Your Steps (Sabour et al. 2024, arXiv:2404.14507): minimize
  the KL-divergence upper bound (KLUB) of the first-order discretization, coarse to fine.
- :func:`optimize_family`: 1-D search of a fixed family's shape parameter (Karras rho, exponential
  with a time shift).

Conventions: ``calibration`` (and ``held_out``) are batches of *starting noises* x = sigma_max * eps
(DESIGN.md: "noise already multiplied by sigmas[0]"). The held-out batch defaults to
sigma_max * randn(calibration.shape) drawn from ``seed + 1``; it is never seen by the search. Every
result grid has ``steps + 1`` levels: sigma_max, strictly decreasing levels down to the last positive
one, then 0, where ``steps`` is the most intervals the sampler can take within ``nfe``. The last
positive level is sigma_min exactly, except for the direct search with ``free_last`` (its default),
which places it anywhere in [sigma_min, sigma_max): at 4-8 NFE the final jump D(x, sigma_last) is
one whole evaluation, and spending it at sigma_min = 0.01 is often a waste (on the stiff 64-D
mixture the free last level lands near 0.2 and halves the error of DPM-Solver++(2M) at 4 NFE).

The search is gradient-free, by measurement and by design: the sampler registry converts the grid to
host floats (no device sync per step), so autograd does not reach the sigmas; the error is smooth
in the few free levels (at most nfe - 1), and the dimension-adaptive Nelder-Mead below reached the
same minima as scipy's (to 4 digits, in as many or fewer evaluations) and as a coordinate-wise
golden-section search on every exact-mixture case tried, so scipy is not needed. Overfitting, not
the optimizer, limited the stiff mixture: 64 calibration starts gave 28% lower calibration error
and 9% higher held-out error; 512 give matching errors. Everything is deterministic, so one seed
gives identical sigmas.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from difflab.core import grids as _grids
from difflab.core.tensors import check_name

__all__ = [
    "FIXED_GRIDS",
    "METHODS",
    "METRICS",
    "OptimizedGrid",
    "Reference",
    "optimize",
    "optimize_family",
]

# a sampler name (run on a Karras grid), a callable x -> endpoint, or the endpoints of (calibration,
# held-out) already computed
Reference = str | Callable[[Tensor], Tensor] | tuple[Tensor, Tensor]

FIXED_GRIDS = ("karras", "exponential", "kl_optimal")  # the initializations and the baseline
METHODS = ("direct", "ays")
# endpoint error e = x - x_ref per sample i: "rmse" = sqrt(mean_i |e_i|^2 / d), dominated by the
# worst trajectories; "mean_rms" = mean_i sqrt(|e_i|^2 / d), the typical trajectory's error
METRICS = ("rmse", "mean_rms")
FAMILIES = ("karras", "exponential")
_F64 = torch.float64
_RANGE_EVALS = 12  # golden section of a fixed grid's sigma_last: 0.618^10 ~ 1% of the range
_FAMILY_EVALS = 30  # golden section: the bracket shrinks to 0.618^28 ~ 1e-6 of its width
_GAP_FLOOR = 1e-3  # each log-sigma gap keeps at least this fraction / (steps - 1) of the range


@dataclass
class OptimizedGrid:
    """An optimized grid and how well it does, on the calibration batch and on held-out noise.

    ``fixed`` maps each fixed grid name to (calibration error, held-out error); ``best_fixed`` is the
    one with the smallest calibration error. Errors compare the sampler's endpoint with the reference
    endpoint from the same start by ``metric`` (see :data:`METRICS`).
    """

    sigmas: Tensor
    sampler: str
    nfe: int
    method: str
    calibration_error: float
    held_out_error: float
    fixed: dict[str, tuple[float, float]]
    best_fixed: str
    params: dict[str, float] = field(default_factory=dict)
    metric: str = "rmse"

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def best_fixed_error(self) -> tuple[float, float]:
        """(calibration, held-out) error of the best fixed grid."""
        return self.fixed[self.best_fixed]

    @property
    def ratio(self) -> float:
        """Held-out error relative to the best fixed grid's held-out error (< 1 is better)."""
        return self.held_out_error / self.fixed[self.best_fixed][1]

    def to_json(self) -> str:
        data = asdict(self)
        data["sigmas"] = [float(s) for s in self.sigmas]
        data["fixed"] = {k: list(v) for k, v in self.fixed.items()}
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> OptimizedGrid:
        data = json.loads(text)
        missing = {f for f in cls.__dataclass_fields__ if f not in ("params", "metric")} - set(data)
        if missing:
            raise ValueError(f"OptimizedGrid JSON lacks {', '.join(sorted(missing))}")
        data["sigmas"] = torch.tensor(data["sigmas"], dtype=_F64)
        data["fixed"] = {k: (float(v[0]), float(v[1])) for k, v in data["fixed"].items()}
        return cls(**data)


# --------------------------------------------------------------------------------------------
# the shared problem: calibration batch, references, error of a grid


def _steps_for(sampler: str, nfe: int) -> int:
    """The most intervals n with info(sampler).nfe(n) <= nfe (at least 2: sigma_max, sigma_min, 0)."""
    from difflab.sampling import info

    entry = info(sampler)
    if entry.adaptive:
        raise ValueError(f"sampler {sampler!r} chooses its own steps; it has no grid to optimize")
    steps = entry.steps_for(nfe) or 0
    if steps < 2:
        need = entry.nfe(2)
        raise ValueError(
            f"nfe={nfe} is too small for sampler {sampler!r}: a grid sigma_max -> sigma_min -> 0 "
            f"has 2 steps and costs {need} NFE"
        )
    return steps


class _Problem:
    """Calibration and held-out starts, their reference endpoints, and errors of candidate grids."""

    def __init__(
        self,
        denoiser: Callable[..., Tensor],
        sampler: str,
        nfe: int,
        calibration: Tensor,
        sigma_min: float,
        sigma_max: float,
        seed: int,
        reference: Reference,
        reference_nfe: int,
        held_out: Tensor | None,
        sampler_options: dict[str, Any],
        cond: dict[str, Any] | None = None,
        metric: str = "rmse",
    ) -> None:
        from difflab.sampling import get, info

        check_name("error metric", metric, METRICS)
        self.metric = metric
        if not (0 < sigma_min < sigma_max < math.inf):
            raise ValueError(
                f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, "
                f"sigma_max={sigma_max}"
            )
        if not isinstance(calibration, Tensor) or calibration.ndim < 1 or len(calibration) < 1:
            raise ValueError("calibration must be a tensor [B, ...] of starting noises")
        self.name, self.steps = sampler, _steps_for(sampler, nfe)
        self.fn, self.stochastic = get(sampler), info(sampler).stochastic
        self.denoiser, self.options, self.seed = denoiser, sampler_options, seed
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.lo, self.hi = math.log(self.sigma_min), math.log(self.sigma_max)
        self.free_last = False  # whether grid() takes the last positive level as a variable
        self.x_cal = calibration
        if held_out is None:
            g = torch.Generator(device="cpu").manual_seed(seed + 1)
            eps = torch.randn(calibration.shape, generator=g, dtype=_F64)
            held_out = (self.sigma_max * eps).to(calibration.dtype).to(calibration.device)
        self.x_held = held_out
        self.cond = dict(cond or {})
        per_sample = [k for k, v in self.cond.items() if isinstance(v, Tensor) and v.ndim > 0]
        if per_sample and len(held_out) != len(calibration):
            raise ValueError(
                f"cond {per_sample[0]!r} holds one value per sample, so held_out needs as many "
                f"samples as calibration ({len(calibration)}), got {len(held_out)}"
            )
        if isinstance(reference, tuple):
            self.ref_cal, self.ref_held = reference
            for what, ref, x in (("calibration", self.ref_cal, self.x_cal), ("held-out",
                                 self.ref_held, self.x_held)):  # fmt: skip
                if not isinstance(ref, Tensor) or ref.shape != x.shape:
                    raise ValueError(
                        f"the {what} reference endpoints must be a tensor of shape "
                        f"{tuple(x.shape)} like the {what} noises"
                    )
        else:
            if not callable(reference):
                ref_fn = get(reference)
                ref_grid = _grids.karras(reference_nfe, self.sigma_min, self.sigma_max)

                def reference(x: Tensor) -> Tensor:
                    return ref_fn(denoiser, x, ref_grid.to(x.device), cond=self.cond)

            self.ref_cal, self.ref_held = reference(self.x_cal), reference(self.x_held)

    def run(self, sigmas: Tensor, x: Tensor) -> Tensor:
        extra: dict[str, Any] = {}
        if self.stochastic:  # common random numbers: the same noise for every candidate grid
            extra["generator"] = torch.Generator(device=x.device).manual_seed(self.seed)
        with torch.no_grad():
            return self.fn(
                self.denoiser, x, sigmas.to(x.device), cond=self.cond, **extra, **self.options
            )

    def error(self, sigmas: Tensor, held: bool = False) -> float:
        """The endpoint's ``metric`` error against the reference endpoint (:data:`METRICS`)."""
        x, ref = (self.x_held, self.ref_held) if held else (self.x_cal, self.ref_cal)
        sq = (self.run(sigmas, x).double() - ref.double()).square().flatten(1).mean(1)
        err = float(sq.mean().sqrt() if self.metric == "rmse" else sq.sqrt().mean())
        return err if math.isfinite(err) else math.inf

    def errors(self, sigmas: Tensor) -> tuple[float, float]:
        return self.error(sigmas), self.error(sigmas, held=True)

    def fixed(self) -> tuple[dict[str, tuple[float, float]], str]:
        """(calibration, held-out) errors of each fixed grid, and the name of the one best on the
        calibration batch (the start of every search and the bar it must clear)."""
        errors = {
            name: self.errors(_grids.get(name)(self.steps, self.sigma_min, self.sigma_max))
            for name in FIXED_GRIDS
        }
        return errors, min(errors, key=lambda k: errors[k][0])

    # --- the monotone parameterization: logits -> log-sigma gaps (cumulative softmax), and with a
    # free last level one more variable v for where it stops above sigma_min

    def grid(self, z: np.ndarray) -> Tensor:
        """sigma_max, exp(hi - (hi - low) cumsum(gap)), 0 with gap = softmax([logits, 0]) floored at
        _GAP_FLOOR / (steps - 1): the last positive level is exp(low) = sigma_min, or, with a free
        last level, low = lo + (hi - lo) r with r = 1 - e^-|v| <= 1 - _GAP_FLOOR for the last
        entry v of z."""
        z = np.asarray(z, dtype=np.float64)
        low = self.lo
        if self.free_last:
            z, v = z[:-1], min(abs(float(z[-1])), -math.log(_GAP_FLOOR))
            low = self.lo + (self.hi - self.lo) * -math.expm1(-v)
        m = self.steps - 1
        z = np.concatenate([z, [0.0]])
        p = np.exp(z - z.max())
        gaps = (1 - _GAP_FLOOR) * p / p.sum() + _GAP_FLOOR / m
        levels = np.exp(self.hi - (self.hi - low) * np.cumsum(gaps)[:-1])
        last = self.sigma_min if low == self.lo else math.exp(low)
        return _assemble(levels, last, self.sigma_max)

    def logits(self, sigmas: Tensor) -> np.ndarray:
        """The inverse of :meth:`grid` for a grid sigma_max .. sigma_last >= sigma_min, 0."""
        logs = np.log(sigmas[:-1].double().cpu().numpy())
        m, low = self.steps - 1, float(logs[-1])
        gaps = -np.diff(logs) / (self.hi - low)
        p = np.clip((gaps - _GAP_FLOOR / m) / (1 - _GAP_FLOOR), 1e-12, None)
        z = np.log(p[:-1] / p[-1])
        if self.free_last:
            z = np.append(z, -math.log1p(-(low - self.lo) / (self.hi - self.lo)))
        return z


def _assemble(interior: np.ndarray | list[float], last: float, sigma_max: float) -> Tensor:
    """[sigma_max, *interior, last, 0] with the endpoints exact; checks strict decrease."""
    s = torch.tensor([sigma_max, *[float(v) for v in interior], last, 0.0], dtype=_F64)
    if not bool((s[1:] < s[:-1]).all()):
        raise RuntimeError(f"internal error: optimized grid is not strictly decreasing: {s}")
    return s


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, leave=False)


def _check_method(method: str) -> None:
    check_name("optimization method", method, METHODS)


# --------------------------------------------------------------------------------------------
# method="direct"


def nelder_mead(
    f: Callable[[np.ndarray], float], x0: np.ndarray, step: float, max_evals: int, xatol: float
) -> tuple[np.ndarray, float, int]:
    """(argmin, min, evaluations) of f by the Nelder-Mead simplex search (Nelder & Mead 1965) from
    the simplex x0, x0 + step e_i, with Gao & Han's (2012) dimension-adaptive coefficients above 3
    dimensions; stops once it has spent ``max_evals`` evaluations (a shrink may finish its n more)
    or when the simplex is within ``xatol``."""
    n = len(x0)
    if n > 3:
        expand, contract, shrink = 1 + 2 / n, 0.75 - 1 / (2 * n), 1 - 1 / n
    else:
        expand, contract, shrink = 2.0, 0.5, 0.5
    pts = np.vstack([x0, x0 + step * np.eye(n)])
    vals = np.array([f(p) for p in pts])
    evals = n + 1
    while evals < max_evals:
        order = np.argsort(vals, kind="stable")
        pts, vals = pts[order], vals[order]
        if np.abs(pts[1:] - pts[0]).max() <= xatol:
            break
        centroid = pts[:-1].mean(0)
        reflected = 2 * centroid - pts[-1]
        f_r = f(reflected)
        evals += 1
        if f_r < vals[0]:
            expanded = centroid + expand * (reflected - centroid)
            f_e = f(expanded)
            evals += 1
            pts[-1], vals[-1] = (expanded, f_e) if f_e < f_r else (reflected, f_r)
        elif f_r < vals[-2]:
            pts[-1], vals[-1] = reflected, f_r
        else:  # contract towards the better of the reflected and the worst point
            towards = reflected if f_r < vals[-1] else pts[-1]
            contracted = centroid + contract * (towards - centroid)
            f_c = f(contracted)
            evals += 1
            if f_c < min(f_r, vals[-1]):
                pts[-1], vals[-1] = contracted, f_c
            else:
                pts[1:] = pts[0] + shrink * (pts[1:] - pts[0])
                vals[1:] = [f(p) for p in pts[1:]]
                evals += n
    best = int(np.argmin(vals))
    return pts[best], float(vals[best]), evals


def golden_section(
    f: Callable[[float], float], lo: float, hi: float, evals: int
) -> tuple[float, float]:
    """(argmin, min) of a unimodal f on [lo, hi] by golden-section search (Kiefer 1953) in ``evals``
    evaluations."""
    ratio = (math.sqrt(5) - 1) / 2
    c, d = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fc, fd = f(c), f(d)
    for _ in range(evals - 2):
        if fc < fd:
            hi, d, fd = d, c, fc
            c = hi - ratio * (hi - lo)
            fc = f(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + ratio * (hi - lo)
            fd = f(d)
    return (c, fc) if fc < fd else (d, fd)


def _direct(
    problem: _Problem, fixed: dict[str, tuple[float, float]], max_evals: int, progress: bool
) -> tuple[Tensor, dict[str, float]]:
    """Coarse to fine: with a free last level, first each fixed grid's range [sigma_last, sigma_max]
    by golden section in log sigma_last (:data:`_RANGE_EVALS` evaluations each, at most half of
    ``max_evals`` in all); then Nelder-Mead on all levels from the best of these (fixed initial
    simplex: deterministic) with the rest of the budget. The result is never worse on the
    calibration batch than the best fixed grid."""
    bar = _progress(max_evals, f"direct {problem.name} {problem.steps} steps", progress)
    best, evals = math.inf, 0

    def error(sigmas: Tensor) -> float:
        nonlocal best, evals
        value = problem.error(sigmas)
        best, evals = min(best, value), evals + 1
        bar.update(1)
        bar.set_postfix(best=f"{best:.3e}", refresh=False)
        return value

    def ranged(name: str, r: float) -> Tensor:
        last = math.exp(problem.lo + r * (problem.hi - problem.lo)) if r > 0 else problem.sigma_min
        return _grids.get(name)(problem.steps, last, problem.sigma_max)

    starts = [(fixed[name][0], _grids.get(name)(problem.steps, problem.sigma_min,
               problem.sigma_max)) for name in FIXED_GRIDS]  # fmt: skip
    per_grid = min(_RANGE_EVALS, max_evals // (2 * len(FIXED_GRIDS)))  # at most half the budget
    if problem.free_last and per_grid >= 2:
        for name in FIXED_GRIDS:
            r, value = golden_section(
                lambda r, name=name: error(ranged(name, r)), 0.0, 0.9, per_grid
            )
            starts.append((value, ranged(name, r)))
    value, init = min(starts, key=lambda start: start[0])
    x0 = problem.logits(init)
    if len(x0) and max_evals > evals:
        z, found, _ = nelder_mead(
            lambda z: error(problem.grid(z)), x0, 0.5, max_evals - evals, 1e-4
        )
        if found < value:  # else grid(logits(init)) may differ from init by rounding
            init = problem.grid(z)
    bar.close()
    return init, {"evaluations": float(evals)}


# --------------------------------------------------------------------------------------------
# method="ays": KL upper bound, coordinate search, coarse to fine

_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(4)


class _Klub:
    """KLUB(s_0 > ... > s_m) = sum_i int_{s_{i+1}}^{s_i} E||D(x0 + s eps, s) - D(x0 + s_i eps, s_i)||^2
    / s^3 ds (Sabour et al. 2024, eq. 7-8 for the VE/EDM SDE dx = -2 s grad log p ds + sqrt(2s) dw):
    the KL divergence between the exact reverse SDE and the one whose denoiser is frozen at each
    interval's start. x0 are the reference endpoints of the calibration noises (samples of the model),
    eps one fixed draw from the seed (common random numbers), the integral 4-point Gauss-Legendre in
    log s (the paper: Monte Carlo with importance sampling)."""

    def __init__(self, problem: _Problem, samples: int) -> None:
        x0 = problem.ref_cal[:samples]
        g = torch.Generator(device="cpu").manual_seed(problem.seed + 2)
        self.x0 = x0
        self.eps = torch.randn(x0.shape, generator=g, dtype=_F64).to(x0.dtype).to(x0.device)
        self.denoiser = problem.denoiser
        self.cond = {
            k: v[:samples] if isinstance(v, Tensor) and v.ndim > 0 else v
            for k, v in problem.cond.items()
        }

    def _d(self, s: float) -> Tensor:
        sigma = torch.full((len(self.x0),), s, dtype=self.x0.dtype, device=self.x0.device)
        with torch.no_grad():
            return self.denoiser(self.x0 + s * self.eps, sigma, **self.cond)

    def interval(self, s_hi: float, s_lo: float) -> float:
        """int_{s_lo}^{s_hi} E||D(x_s, s) - D(x_{s_hi}, s_hi)||^2 / s^2 d(log s)."""
        start = self._d(s_hi)
        a, b = math.log(s_lo), math.log(s_hi)
        total = 0.0
        for node, weight in zip(_GAUSS_NODES, _GAUSS_WEIGHTS):
            s = math.exp((a + b) / 2 + (b - a) / 2 * node)
            diff = (self._d(s) - start).double().flatten(1).square().sum(1).mean()
            total += (b - a) / 2 * weight * float(diff) / s**2
        return total


def _ays(
    problem: _Problem, init: Tensor, sweeps: int, candidates: int, samples: int, progress: bool
) -> tuple[Tensor, dict[str, float]]:
    """Coarse to fine (Sabour et al. 2024, sec. 3.3): optimize a grid of about half the levels, refine
    by log-linear interpolation, re-optimize; each sweep moves every interior level in turn to the
    best of ``candidates`` log-spaced positions between its neighbours (twice, zooming in), as the
    paper's iterative per-level search with its early stopping replaced by a fixed sweep count."""
    klub = _Klub(problem, samples)
    n = problem.steps  # positive levels
    sizes = [n] if n <= 4 else [max(3, (n + 1) // 2), n]
    log_levels = np.log(init[:-1].double().cpu().numpy())
    log_levels = _loglinear(log_levels, sizes[0])
    work = sum(sweeps * (size - 2) * 2 for size in sizes)
    bar = _progress(work, f"ays {problem.steps} steps", progress)
    for k, size in enumerate(sizes):
        if k:
            log_levels = _loglinear(log_levels, size)
        for _ in range(sweeps):
            for i in range(1, size - 1):
                log_levels[i] = _best_level(klub, log_levels, i, candidates)
                bar.update(1)
    bar.close()
    final = _assemble(np.exp(log_levels[1:-1]), problem.sigma_min, problem.sigma_max)
    lvl = np.exp(log_levels)
    value = sum(klub.interval(lvl[i], lvl[i + 1]) for i in range(len(lvl) - 1))
    return final, {"klub": value}


def _loglinear(log_levels: np.ndarray, size: int) -> np.ndarray:
    """Resample decreasing log levels to ``size`` points, linear over linspace(0, 1) (AYS reference
    ``loglinear_interp``)."""
    xs = np.linspace(0, 1, len(log_levels))
    return np.interp(np.linspace(0, 1, size), xs, log_levels)


def _best_level(klub: _Klub, log_levels: np.ndarray, i: int, candidates: int) -> float:
    """argmin over log s_i in (log s_{i+1}, log s_{i-1}) of the two adjacent intervals' KLUB."""
    hi, lo = log_levels[i - 1], log_levels[i + 1]
    a, b = lo, hi
    best, best_val = log_levels[i], math.inf
    for _ in range(2):
        grid = np.linspace(a, b, candidates + 2)[1:-1]
        for v in [*grid, best]:
            val = klub.interval(math.exp(hi), math.exp(v)) + klub.interval(
                math.exp(v), math.exp(lo)
            )
            if val < best_val:
                best, best_val = float(v), val
        width = (b - a) / (candidates + 1)
        a, b = max(lo, best - width), min(hi, best + width)
    margin = 1e-6 * (hi - lo)
    return min(max(best, lo + margin), hi - margin)


# --------------------------------------------------------------------------------------------
# public API


def optimize(
    denoiser: Callable[..., Tensor],
    sampler: str,
    nfe: int,
    calibration: Tensor,
    *,
    sigma_min: float,
    sigma_max: float,
    method: str = "direct",
    seed: int = 0,
    reference: Reference = "dpmpp_3m",
    reference_nfe: int = 256,
    held_out: Tensor | None = None,
    progress: bool = True,
    sampler_options: dict[str, Any] | None = None,
    cond: dict[str, Any] | None = None,
    metric: str = "rmse",
    **options: Any,
) -> OptimizedGrid:
    """The grid minimizing the endpoint error of ``sampler`` at ``nfe`` evaluations for ``denoiser``.

    direct: min_z RMSE(sampler(x, grid(z)), ref(x)), grid(z) = exp(log s_max - log(s_max/s_last)
    cumsum softmax(z)), over the calibration noises x (Nelder & Mead 1965), s_last in [s_min, s_max)
    one more variable unless ``free_last=False``; ays: min KLUB, Sabour et al. 2024 "Align Your
    Steps" (see :class:`_Klub` and :func:`_ays` for what is simplified).

    ``calibration``: starting noises x = sigma_max * eps, [B, ...]. ``reference``: a sampler name run
    on a ``reference_nfe``-step Karras grid, a callable x -> exact endpoint (e.g. a mixture's
    ``ode``), or the (calibration, held-out) endpoints already computed. ``held_out``: other
    starting noises for the reported held-out error (default: drawn from ``seed + 1``).
    ``sampler_options`` go to the sampler, ``cond`` to the denoiser (per-sample tensors such as
    ``labels`` apply alike to the calibration and held-out rows). ``metric``: the error minimized
    and reported, "rmse" or "mean_rms" (:data:`METRICS`). ``options``: direct ``max_evals``
    (default max(200, 60 (steps - 2))) and ``free_last`` (True); ays ``sweeps`` (3), ``candidates``
    (12), ``samples`` (calibration size). A stochastic sampler is evaluated with common random
    numbers (one generator seeded with ``seed``). The search starts from the best of the fixed grids
    (karras rho 7, exponential, kl_optimal) for this sampler and NFE, and the direct result is never
    worse than it on the calibration batch.
    """
    _check_method(method)
    allowed = {"direct": {"max_evals", "free_last"}, "ays": {"sweeps", "candidates", "samples"}}[
        method
    ]
    for key in options:
        check_name(f"option for method {method!r}", key, allowed)
    problem = _Problem(
        denoiser, sampler, nfe, calibration, sigma_min, sigma_max, seed, reference,
        reference_nfe, held_out, dict(sampler_options or {}), cond, metric,
    )  # fmt: skip
    fixed, best_fixed = problem.fixed()
    if method == "direct":
        problem.free_last = bool(options.get("free_last", True))
        max_evals = int(options.get("max_evals", max(200, 60 * (problem.steps - 2))))
        sigmas, params = _direct(problem, fixed, max_evals, progress)
    else:
        sigmas, params = _ays(
            problem,
            _grids.get(best_fixed)(problem.steps, problem.sigma_min, problem.sigma_max),
            int(options.get("sweeps", 3)),
            int(options.get("candidates", 12)),
            int(options.get("samples", len(calibration))),
            progress,
        )
    cal, held = problem.errors(sigmas)
    return OptimizedGrid(sigmas, sampler, nfe, method, cal, held, fixed, best_fixed, params, metric)


def _family_grid(family: str, steps: int, lo: float, hi: float, p: float) -> Tensor:
    """karras with rho = p; exponential with the ramp shifted r' = a r / (1 + (a - 1) r), a = e^p
    (the SD3 time shift, Esser et al. 2024, applied to the log-sigma ramp)."""
    if family == "karras":
        return _grids.karras(steps, lo, hi, rho=p)
    a = math.exp(p)
    r = torch.linspace(0, 1, steps, dtype=_F64)
    r = a * r / (1 + (a - 1) * r)
    levels = torch.exp(math.log(hi) + r * (math.log(lo) - math.log(hi)))
    return _assemble(levels[1:-1].tolist(), lo, hi)


def optimize_family(
    denoiser: Callable[..., Tensor],
    sampler: str,
    nfe: int,
    calibration: Tensor,
    *,
    sigma_min: float,
    sigma_max: float,
    family: str = "karras",
    bounds: tuple[float, float] | None = None,
    seed: int = 0,
    reference: Reference = "dpmpp_3m",
    reference_nfe: int = 256,
    held_out: Tensor | None = None,
    progress: bool = True,
    sampler_options: dict[str, Any] | None = None,
    cond: dict[str, Any] | None = None,
    metric: str = "rmse",
) -> OptimizedGrid:
    """min_p RMSE(sampler(x, family(p)), ref(x)) by golden-section search in p (kept only if better
    than the fixed grid, rho 7 or no shift): Karras
    rho in [1, 20] (Karras et al. 2022, eq. 5), or log of the exponential grid's time shift in
    [-3, 3] (Esser et al. 2024, eq. 23). Same calibration/held-out conventions as :func:`optimize`;
    ``params`` holds the found ``rho`` or ``shift``."""
    check_name("grid family", family, FAMILIES)
    problem = _Problem(
        denoiser, sampler, nfe, calibration, sigma_min, sigma_max, seed, reference,
        reference_nfe, held_out, dict(sampler_options or {}), cond, metric,
    )  # fmt: skip
    fixed, best_fixed = problem.fixed()
    lo_b, hi_b = bounds or ((1.0, 20.0) if family == "karras" else (-3.0, 3.0))
    bar = _progress(_FAMILY_EVALS, f"{family} {sampler} {problem.steps} steps", progress)

    def objective(p: float) -> float:
        bar.update(1)
        return problem.error(_family_grid(family, problem.steps, sigma_min, sigma_max, p))

    p, value = golden_section(objective, lo_b, hi_b, _FAMILY_EVALS)
    bar.close()
    default = 7.0 if family == "karras" else 0.0  # the fixed grid: never return worse than it
    if lo_b <= default <= hi_b and objective(default) < value:
        p = default
    sigmas = _family_grid(family, problem.steps, sigma_min, sigma_max, p)
    cal, held = problem.errors(sigmas)
    params = {"rho": p} if family == "karras" else {"shift": math.exp(p)}
    return OptimizedGrid(
        sigmas, sampler, nfe, f"family:{family}", cal, held, fixed, best_fixed, params, metric
    )
