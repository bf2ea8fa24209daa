"""The Gaussian approximation of p(y | x) at noise level sigma that the restoration methods share
(Song et al. 2023's, used by PiGDM's guidance and the SMC twist) and its exact Gaussian conditioning.

With p(x0 | x) ~ N(D(x, sigma), r^2 I), y = A x0 + n, n ~ N(0, noise_std^2 I):

    p~(y | x) = N(y; A D, noise_std^2 I + r^2 A A^T),   r^2 = sigma^2 c^2 / (sigma^2 + c^2)

r^2 is the posterior variance of x0 | x for x0 ~ N(0, c^2 I) (c = ``data_std``; c = 1 is the paper's
choice). An operator given as a plain differentiable callable has no A A^T:
p~(y | x) = N(A(D), (noise_std^2 + r^2) I) takes A A^T ~ I (exact for masks and orthogonal
projections; r = 0 is Wu et al. 2023's twist, whose weights degenerate at high noise).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from difflab.restoration.measurement import Operator
from difflab.restoration.operators import LinearOperator

__all__ = ["condition", "log_likelihood", "posterior_variance"]

_LOG_2PI = math.log(2 * math.pi)


def posterior_variance(sigma: Tensor | float, data_std: float) -> Tensor | float:
    """r^2 = sigma^2 c^2 / (sigma^2 + c^2): Var[x0 | x] for x0 ~ N(0, c^2 I) (PiGDM's r_t^2 at c = 1)."""
    if not data_std > 0:
        raise ValueError(f"data_std must be > 0, got {data_std}")
    return sigma * sigma * data_std**2 / (sigma * sigma + data_std**2)


def _spectral_variance(op: LinearOperator, like: Tensor, noise_std: float, r2: Tensor) -> Tensor:
    """noise_std^2 + r^2 s_i^2 [B or 1, r]: the variance of U^T y's range coordinates under p~."""
    return noise_std**2 + r2.reshape(-1, 1) * op.s(like).square()


def log_likelihood(
    operator: Operator, y: Tensor, d: Tensor, noise_std: float, r2: Tensor | float = 0.0
) -> Tensor:
    """log N(y; A d, noise_std^2 I + r2 A A^T) per sample [B] (r2 a number or one per sample),
    evaluated in U's coordinates. With noise_std = 0, U^T y's coordinates outside A's range are
    left out (they do not depend on d). For a callable A: log N(y; A(d), (noise_std^2 + r2) I)."""
    r2 = torch.as_tensor(r2, dtype=d.dtype, device=d.device)
    if not isinstance(operator, LinearOperator):
        res = (y - operator(d)).flatten(1)
        var = (noise_std**2 + r2).reshape(-1)
        return -0.5 * (res.square().sum(1) / var + res.shape[1] * (var.log() + _LOG_2PI))
    op, r = operator, operator.rank
    c = op.ut(y - op(d))
    var = _spectral_variance(op, d, noise_std, r2)
    out = -0.5 * (c[:, :r].square() / var + var.log() + _LOG_2PI).sum(1)
    if noise_std > 0 and op.out_dim > r:
        rest = c[:, r:].square().sum(1) / noise_std**2
        out = out - 0.5 * (rest + (op.out_dim - r) * (2 * math.log(noise_std) + _LOG_2PI))
    return out


def condition(
    operator: LinearOperator, y: Tensor, d: Tensor, noise_std: float, r2: float, z: Tensor
) -> Tensor:
    """A draw from N(x0; d, r2 I) conditioned on y = A x0 + n: mean d + r2 A^T S^-1 (y - A d),
    S = r2 A A^T + noise_std^2 I, covariance r2 I - r2^2 A^T S^-1 A, i.e. in V's coordinates
    variance r2 noise_std^2 / (r2 s_i^2 + noise_std^2) on the range and r2 on the null space;
    ``z`` is standard normal like d. Needs a LinearOperator."""
    op, r = operator, operator.rank
    s = op.s(d)
    var = noise_std**2 + r2 * s.square()
    gain = op.ut(y - op(d))[:, :r] * (r2 * s / var)
    std = torch.full((op.in_dim,), math.sqrt(r2), dtype=d.dtype, device=d.device)
    std[:r] = (r2 * noise_std**2 / var).sqrt()
    shift = torch.cat([gain, gain.new_zeros(len(d), op.in_dim - r)], 1)
    return d + op.v(shift + std * z.flatten(1))
