"""The stationary Gaussian AR(1) process, an exact model of time series: its samples, covariance,
forecasts and the conditional of any entries given any others in closed form, the ground truth that
judges probabilistic forecasting and imputation (DESIGN.md, "Truth comes from exact models").

    x_t = phi x_{t-1} + sqrt(1 - phi^2) sigma eps_t,   x_0 ~ N(0, sigma^2)

K independent columns, each stationary with Cov(x_i, x_j) = sigma^2 phi^|i-j|. The process is
Markov, so an entry given the others depends only on the nearest given entries on each side:
before, a forecast; after, a backcast; both, a Gaussian bridge (Brockwell & Davis 1991, sec. 3.3).
All arithmetic is float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from difflab.testing.gmm import GaussianMixture, gaussian

__all__ = ["AR1"]


class AR1:
    """K independent stationary AR(1) columns x_t = phi x_{t-1} + sqrt(1 - phi^2) sigma eps_t,
    Cov(x_i, x_j) = sigma^2 phi^|i-j| (Brockwell & Davis 1991)."""

    def __init__(self, phi: float, sigma: float = 1.0, dim: int = 1) -> None:
        if not -1 < phi < 1:
            raise ValueError(f"a stationary AR(1) needs |phi| < 1, got {phi}")
        if not sigma > 0 or not math.isfinite(sigma):
            raise ValueError(f"AR(1) needs a finite sigma > 0, got {sigma}")
        if dim < 1:
            raise ValueError(f"AR(1) needs dim >= 1 columns, got {dim}")
        self.phi, self.sigma, self.dim = float(phi), float(sigma), dim

    def __repr__(self) -> str:
        return f"AR1(phi={self.phi}, sigma={self.sigma}, dim={self.dim})"

    def _power(self, lag: Tensor) -> Tensor:
        """phi^lag for integer lags >= 0 (phi^0 = 1, also for phi = 0)."""
        return torch.full(lag.shape, self.phi, dtype=torch.float64, device=lag.device).pow(lag)

    def sample(self, n: int, length: int, generator: torch.Generator | None = None) -> Tensor:
        """[n, length, K] paths from the stationary start x_0 ~ N(0, sigma^2)."""
        eps = torch.randn(n, length, self.dim, generator=generator, dtype=torch.float64)
        x = torch.empty_like(eps)
        x[:, 0] = self.sigma * eps[:, 0]
        innovation = math.sqrt(1 - self.phi**2) * self.sigma
        for t in range(1, length):
            x[:, t] = self.phi * x[:, t - 1] + innovation * eps[:, t]
        return x

    def covariance(self, length: int) -> Tensor:
        """[L, L]: sigma^2 phi^|i-j|, each column's covariance over a window."""
        steps = torch.arange(length)
        return self.sigma**2 * self._power((steps[:, None] - steps[None, :]).abs())

    def forecast(self, context: Tensor, horizon: int) -> tuple[Tensor, Tensor]:
        """(mean, var) [B, H, K] of x_{C+h} given a context [B, C, K]: phi^h x_C and
        sigma^2 (1 - phi^(2h)), h = 1..H."""
        if context.ndim != 3 or context.shape[-1] != self.dim or context.shape[1] < 1:
            raise ValueError(f"context must be [B, C >= 1, {self.dim}], got {list(context.shape)}")
        power = self._power(torch.arange(1, horizon + 1, device=context.device))[:, None]
        mean = power * context[:, -1:].double()
        var = (self.sigma**2 * (1 - power.square())).expand(mean.shape)
        return mean, var

    def conditional(self, values: Tensor, given: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, var) [B, L, K] of every entry given the ``given`` entries of ``values``, exact:
        with the nearest given entries a = x_{t-i} before and b = x_{t+j} after,
        mean = (phi^i (1 - phi^2j) a + phi^j (1 - phi^2i) b) / (1 - phi^2(i+j)),
        var = sigma^2 (1 - phi^2i)(1 - phi^2j) / (1 - phi^2(i+j)) (i or j = inf where there is
        none); given entries keep their value with var 0."""
        if values.ndim != 3 or values.shape[-1] != self.dim or given.shape != values.shape:
            raise ValueError(
                f"values and given must be [B, L, {self.dim}] of one shape, got "
                f"{list(values.shape)} and {list(given.shape)}"
            )
        values, given = values.double(), given.bool()
        length = values.shape[1]
        t = torch.arange(length, device=values.device)[:, None]
        before = torch.where(given, t, -1).cummax(1).values  # nearest given step <= t, -1 for none
        after = torch.where(given, t, length).flip(1).cummin(1).values.flip(1)  # >= t, L for none
        a = values.gather(1, before.clamp(min=0))
        b = values.gather(1, after.clamp(max=length - 1))
        has_a, has_b = before >= 0, after < length
        pa = torch.where(has_a, self._power(t - before.clamp(min=0)), 0.0)  # phi^i, 0 for i = inf
        pb = torch.where(has_b, self._power(after.clamp(max=length - 1) - t), 0.0)
        # given entries have i = j = 0 and would divide 0 by 0: they take their value directly
        denominator = torch.where(given, 1.0, 1 - (pa * pb).square())
        mean = (pa * (1 - pb.square()) * a + pb * (1 - pa.square()) * b) / denominator
        var = self.sigma**2 * (1 - pa.square()) * (1 - pb.square()) / denominator
        return torch.where(given, values, mean), torch.where(given, 0.0, var)

    def gaussian(self, length: int) -> GaussianMixture:
        """N(0, kron(Sigma_L, I_K)) over a window flattened row-major to [L * K] (step t, column k
        at t K + k), a one-component GaussianMixture with its exact denoiser."""
        cov = torch.kron(self.covariance(length), torch.eye(self.dim, dtype=torch.float64))
        return gaussian(torch.zeros(length * self.dim, dtype=torch.float64), cov)
