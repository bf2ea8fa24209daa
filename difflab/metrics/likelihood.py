"""Log-likelihood of a diffusion model by the probability-flow ODE (Song et al. 2021, appendix D),
with the instantaneous change of variables of continuous normalizing flows (Chen et al. 2018).

In noise-level coordinates (DESIGN.md) the flow is dx/dsigma = f(x, sigma) = (x - D(x, sigma)) / sigma
and log p_sigma(x(sigma)) changes by -div f along it, so

    log p_{sigma_min}(x) = log N(x(sigma_max); 0, sigma_max^2 I) + int_{sigma_min}^{sigma_max} div f,

div f = (d - tr dD/dx) / sigma. Everything is integrated in u = log sigma, where the state
(x, l) obeys dx/du = x - D and dl/du = d - tr dD/dx: the Jacobian I - dD/dx has eigenvalues in [0, 1]
(exactly so for a Gaussian), so explicit Runge-Kutta steps fit. The trace is exact (one backward pass
per dimension) or Hutchinson's estimate v^T (dD/dx) v with probes v fixed over the whole solve
(Hutchinson 1989; Grathwohl et al. 2019), unbiased because the trajectory does not depend on v.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from difflab.core.dopri import DP_A, DP_B, DP_C, DP_E
from difflab.core.tensors import as_tensor, check_finite, check_name

__all__ = ["SOLVERS", "Likelihood", "dequantize", "image_bits_per_dim", "log_likelihood"]

Denoiser = Callable[..., Tensor]

# Explicit Runge-Kutta tableaus (nodes c, stages A, weights b) for the fixed-step solvers.
_FIXED = {
    "heun": ((0.0, 1.0), ((), (1.0,)), (0.5, 0.5)),
    "rk4": (
        (0.0, 0.5, 0.5, 1.0),
        ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
        (1 / 6, 1 / 3, 1 / 3, 1 / 6),
    ),
}
SOLVERS = (*_FIXED, "dopri5")
_DIVERGENCES = ("auto", "exact", "hutchinson")
_PROBES = ("rademacher", "gaussian")
_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class Likelihood:
    """Per-sample results (float64, [B]) of :func:`log_likelihood`."""

    log_prob: Tensor  # log p(x) in nats: prior + divergence + correction
    bits_per_dim: Tensor  # -log p(x) / (d ln 2); the discrete-data bpd for image_bits_per_dim
    prior: Tensor  # log N(x(sigma_max); 0, sigma_max^2 I)
    divergence: Tensor  # int_{sigma_min}^{sigma_max} div f dsigma
    correction: Tensor  # log p_0(x) - log p_{sigma_min}(x), to O(sigma_min^4); 0 when off
    latent: Tensor  # x(sigma_max), in x's dtype
    evaluations: int  # denoiser calls (each with its divergence backward passes)


class _Flow:
    """(dx/du, dl/du) = (x - D, d - tr dD/dx) at u = log sigma, for a sub-batch of rows."""

    def __init__(
        self,
        denoiser: Denoiser,
        x: Tensor,
        cond: dict[str, Any],
        probes: Tensor | None,
    ) -> None:
        self.denoiser, self.cond, self.probes = denoiser, cond, probes
        self.batch, self.dim, self.calls = x.shape[0], x[0].numel(), 0

    def __call__(self, x: Tensor, u: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        cond = {
            k: v[rows] if isinstance(v, Tensor) and v.ndim and v.shape[0] == self.batch else v
            for k, v in self.cond.items()
        }
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            den = self.denoiser(xg, u.exp().to(x.dtype), **cond)
            if den.shape != x.shape:
                raise ValueError(
                    f"the denoiser returned shape {tuple(den.shape)} for x of shape {tuple(x.shape)}"
                )
            if not den.requires_grad:
                raise ValueError(
                    "the denoiser's output does not depend on x through autograd: the divergence "
                    "needs a differentiable denoiser (do not wrap it in torch.no_grad)"
                )
            trace = self._trace(xg, den, rows)
        self.calls += 1
        return (x - den).detach(), self.dim - trace

    def _trace(self, x: Tensor, den: Tensor, rows: Tensor) -> Tensor:
        """tr dD/dx per row [n] (float64): exact, or the mean of v^T (dD/dx) v over the probes."""
        total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        if self.probes is None:
            flat = den.reshape(len(den), -1)
            for i in range(self.dim):
                (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i + 1 < self.dim)
                total += g.reshape(len(g), -1)[:, i].double()
            return total
        probes = self.probes[:, rows]
        for p, v in enumerate(probes):
            (g,) = torch.autograd.grad((den * v).sum(), x, retain_graph=p + 1 < len(probes))
            total += (g * v).reshape(len(g), -1).sum(1).double()
        return total / len(probes)


def _grid(sigmas: Tensor | None, sigma_min: float, sigma_max: float, steps: int) -> Tensor:
    """The increasing grid in u = log sigma: the given sigmas (any order, zeros dropped) or ``steps``
    intervals uniform in log sigma."""
    if sigmas is None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return torch.linspace(
            math.log(sigma_min), math.log(sigma_max), steps + 1, dtype=torch.float64
        )
    s = as_tensor(sigmas, torch.float64).flatten().cpu()
    s = s[s != 0]
    if len(s) >= 2 and s[0] > s[-1]:
        s = s.flip(0)
    if len(s) < 2 or not bool((s.diff() > 0).all()) or not bool(torch.isfinite(s).all()):
        raise ValueError(
            "sigmas must be a monotone grid of at least two finite positive noise levels "
            f"(a final 0 is dropped), got {s.tolist()}"
        )
    return s.log()


def _fixed(
    flow: _Flow, x: Tensor, grid: Tensor, tableau: tuple, first: tuple[Tensor, Tensor]
) -> tuple[Tensor, Tensor]:
    """Explicit Runge-Kutta on the shared grid from (x, l = 0) at grid[0], whose slopes are
    ``first``; returns (x, l) at grid[-1]."""
    c, a, b = tableau
    rows = torch.arange(x.shape[0], device=x.device)
    l = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for i, (u0, u1) in enumerate(itertools.pairwise(grid.tolist())):
        h = u1 - u0
        kx: list[Tensor] = []
        kl: list[Tensor] = []
        for j, (cj, aj) in enumerate(zip(c, a)):
            if i == 0 and j == 0:
                sx, sl = first
            else:
                xj = x + h * sum(w * k for w, k in zip(aj, kx)) if j else x
                sx, sl = flow(xj, torch.full_like(l, u0 + cj * h), rows)
            kx.append(sx)
            kl.append(sl)
        x = x + h * sum(w * k for w, k in zip(b, kx))
        l = l + h * sum(w * k for w, k in zip(b, kl))
    return x, l


def _dopri5(
    flow: _Flow,
    x: Tensor,
    u_start: float,
    u_end: float,
    first: tuple[Tensor, Tensor],
    rtol: float,
    atol: float,
    max_steps: int,
) -> tuple[Tensor, Tensor]:
    """Dormand-Prince 5(4) with a step size per sample (so a sample's result does not depend on its
    batch): a step is accepted when max(RMS_x(err / (atol + rtol |x|)), |err_l| / (atol + rtol |l|))
    <= 1 (Hairer et al., Solving ODEs I, II.4)."""
    n, dev = x.shape[0], x.device
    x = x.clone()
    l = torch.zeros(n, dtype=torch.float64, device=dev)
    u = torch.full((n,), u_start, dtype=torch.float64, device=dev)
    h = torch.full_like(u, 0.1)
    kx1, kl1 = first[0].clone(), first[1].clone()
    active, steps = torch.arange(n, device=dev), 0
    while len(active):
        if steps >= max_steps:
            raise RuntimeError(
                f"the likelihood ODE did not finish in {max_steps} steps (rtol={rtol}, atol={atol})"
            )
        xa, la, ua = x[active], l[active], u[active]
        ha = torch.minimum(h[active], u_end - ua)
        hx = ha.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        kx, kl = [kx1[active]], [kl1[active]]
        for cj, aj in zip(DP_C[1:], DP_A[1:]):
            xj = xa + hx * sum(w * k for w, k in zip(aj, kx))
            sx, sl = flow(xj, ua + cj * ha, active)
            kx.append(sx)
            kl.append(sl)
        x_new = xa + hx * sum(w * k for w, k in zip(DP_B, kx))
        l_new = la + ha * sum(w * k for w, k in zip(DP_B, kl))
        err_x = hx * sum(e * k for e, k in zip(DP_E, kx))
        err_l = ha * sum(e * k for e, k in zip(DP_E, kl))
        norm_x = err_x / (atol + rtol * torch.maximum(xa.abs(), x_new.abs()))
        norm = torch.maximum(
            norm_x.double().square().flatten(1).mean(1).sqrt(),
            err_l.abs() / (atol + rtol * torch.maximum(la.abs(), l_new.abs())),
        ).nan_to_num(nan=torch.inf)
        ok = norm <= 1
        done = active[ok]
        x[done], l[done], kx1[done], kl1[done] = x_new[ok], l_new[ok], kx[-1][ok], kl[-1][ok]
        u[done] = torch.where(ha[ok] == u_end - ua[ok], u_end, ua[ok] + ha[ok])
        h[active] = ha * (0.9 * norm.clamp(min=1e-10) ** -0.2).clamp(0.2, 5.0)
        active = active[u[active] < u_end]
        steps += 1
    return x, l


def _probes(x: Tensor, probe: str, count: int, generator: torch.Generator) -> Tensor:
    """[count, *x.shape] Rademacher (+-1) or standard Gaussian probe vectors."""
    shape = (count, *x.shape)
    if probe == "rademacher":
        v = torch.randint(0, 2, shape, generator=generator).to(x.dtype) * 2 - 1
    else:
        v = torch.randn(shape, generator=generator, dtype=x.dtype)
    return v.to(x.device)


def log_likelihood(
    denoiser: Denoiser,
    x: Tensor,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    solver: str = "dopri5",
    sigmas: Tensor | None = None,
    steps: int = 64,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    divergence: str = "auto",
    probe: str = "rademacher",
    num_probes: int = 1,
    generator: torch.Generator | None = None,
    correction: bool = True,
    max_steps: int = 10_000,
    cond: dict[str, Any] | None = None,
) -> Likelihood:
    """log p_0(x) = log N(x(sigma_max); 0, sigma_max^2 I) + int_{sigma_min}^{sigma_max} div f dsigma
    + c(x), f = (x - D) / sigma, by the probability-flow ODE (Song et al. 2021, appendix D).

    The small-sigma correction c(x) = (d - tr dD/dx) / 2 - |x - D|^2 / (2 sigma_min^2), all at
    sigma_min, turns log p_{sigma_min} into log p_0 to O(sigma_min^4): it is
    -sigma^2/2 (Laplacian log p + |grad log p|^2) of the heat equation, with Tweedie's
    grad log p_sigma = (D - x) / sigma^2 (exact to that order for any smooth density; free, it reuses
    the first slope). ``correction=False`` reports log p_{sigma_min}(x), the exact density of the model
    smoothed by N(0, sigma_min^2 I).

    ``solver``: "heun" or "rk4" on ``sigmas`` (any monotone positive grid, e.g. a difflab step grid;
    then sigma_min and sigma_max are its ends) or on ``steps`` intervals uniform in log sigma, or
    "dopri5" (adaptive Dormand-Prince 5(4), per-sample steps, ``rtol``/``atol`` on x and on the
    log-density). ``divergence``: "exact" (one backward pass per dimension), "hutchinson" (``probe``
    "rademacher" or "gaussian", ``num_probes`` probes per sample, fixed over the solve, drawn from
    ``generator``, default seed 0) or "auto" (exact up to 16 dimensions). ``cond`` is passed to the
    denoiser (per-sample tensors are subset with the batch). bits/dim = -log p_0(x) / (d ln 2).

    The prior N(0, sigma_max^2 I) is off by O(|E x0| / sigma_max) nats per sample (zero on average
    over the data): for data far from the origin raise sigma_max (dopri5's cost grows with
    log sigma_max only).
    """
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a batch [B, ...] with B >= 1, got shape {tuple(x.shape)}")
    check_finite(x)
    for kind, name, valid in (
        ("solver", solver, SOLVERS),
        ("divergence", divergence, _DIVERGENCES),
        ("probe", probe, _PROBES),
    ):
        check_name(kind, name, valid)
    if not 0 < sigma_min < sigma_max < math.inf:
        raise ValueError(
            f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )
    if rtol <= 0 or atol < 0 or num_probes < 1:
        raise ValueError(
            f"need rtol > 0, atol >= 0 and num_probes >= 1, got {rtol}, {atol}, {num_probes}"
        )
    if solver == "dopri5":
        if sigmas is not None:
            raise ValueError("sigmas is a grid for 'heun' or 'rk4'; 'dopri5' chooses its own steps")
        grid = torch.tensor([math.log(sigma_min), math.log(sigma_max)], dtype=torch.float64)
    else:
        grid = _grid(sigmas, sigma_min, sigma_max, steps)
    d = x[0].numel()
    exact = divergence == "exact" or (divergence == "auto" and d <= 16)
    g = torch.Generator().manual_seed(0) if generator is None else generator
    flow = _Flow(denoiser, x, cond or {}, None if exact else _probes(x, probe, num_probes, g))
    u_min, u_max = float(grid[0]), float(grid[-1])
    with torch.no_grad():
        rows = torch.arange(x.shape[0], device=x.device)
        first = flow(
            x, torch.full((x.shape[0],), u_min, dtype=torch.float64, device=x.device), rows
        )
        if solver == "dopri5":
            latent, div = _dopri5(flow, x, u_min, u_max, first, rtol, atol, max_steps)
        else:
            latent, div = _fixed(flow, x, grid, _FIXED[solver], first)
    s_min, s_max = math.exp(u_min), math.exp(u_max)
    prior = -0.5 * latent.double().flatten(1).square().sum(1) / s_max**2
    prior = prior - 0.5 * d * (_LOG_2PI + 2 * math.log(s_max))
    corr = torch.zeros_like(prior)
    if correction:
        corr = 0.5 * first[1] - first[0].double().flatten(1).square().sum(1) / (2 * s_min**2)
    log_prob = prior + div + corr
    return Likelihood(
        log_prob=log_prob,
        bits_per_dim=-log_prob / (d * math.log(2)),
        prior=prior,
        divergence=div,
        correction=corr,
        latent=latent,
        evaluations=flow.calls,
    )


def dequantize(
    images: Tensor, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """y = 2 (k + u) / 256 - 1, u ~ U[0, 1)^d: uint8 images k as continuous data in [-1, 1)
    (uniform dequantization, Theis et al. 2016)."""
    if images.dtype != torch.uint8:
        raise ValueError(
            f"images must be uint8 (0..255) to dequantize, got dtype {images.dtype}: pass the "
            "integer pixel values, not data already scaled to [-1, 1]"
        )
    u = torch.rand(images.shape, generator=generator, dtype=torch.float64).to(images.device)
    return (2 * (images.double() + u) / 256 - 1).to(dtype)


def image_bits_per_dim(
    denoiser: Denoiser,
    images: Tensor,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    **options: Any,
) -> Likelihood:
    """Discrete-data bits/dim of uint8 images k for a model of data scaled to [-1, 1]:
    bpd = -(log p(y) + d log(2/256)) / (d ln 2) = -log p(y) / (d ln 2) + 7, y = 2 (k + u)/256 - 1,
    an upper bound on -log2 P(k) / d (Theis et al. 2016; Song et al. 2021, appendix D).

    The dequantization noise u is drawn first from ``generator`` (default seed 0), then any Hutchinson
    probes; ``options`` go to :func:`log_likelihood`, whose ``log_prob`` (nats) is log p(y).
    """
    g = torch.Generator().manual_seed(0) if generator is None else generator
    y = dequantize(images, g, dtype)
    result = log_likelihood(denoiser, y, generator=g, **options)
    return replace(result, bits_per_dim=result.bits_per_dim + math.log2(256 / 2))
