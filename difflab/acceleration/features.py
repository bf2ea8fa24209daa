"""Per-sample stores of network features from full evaluations, reused or forecast at cached calls.

Order 0 reuses the last full evaluation's feature as it is (DeepCache, Ma et al. 2024; FORA,
Selvaraju et al. 2024). Order m >= 1 forecasts it from the last m + 1 full evaluations at nodes
t_0 (newest), t_1, ... by the Newton interpolation polynomial

    F(t) ~ F[t_0] + F[t_0, t_1] (t - t_0) + F[t_0, t_1, t_2] (t - t_0)(t - t_1) + ...,

the divided differences F[t_0, ..., t_j] playing the role of TaylorSeer's finite-difference
derivatives (Liu et al. 2025). TaylorSeer writes the expansion as sum_j Delta^j F (t - t_0)^j / j!
with backward differences over equal step gaps; the Newton form is the polynomial through the
stored nodes themselves, exact for features of degree <= m at any node spacing (a Heun or
multistep sampler's calls are not equally spaced in any variable), so it is what is used here.

Every sample keeps its own nodes, so a sample's forecast depends on its own history only (a sample
does not depend on its batch, DESIGN.md), and sub-batches can be updated on their own (the
threshold caches of :mod:`difflab.acceleration.blockcache`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["FeatureCache"]


class FeatureCache:
    """The last ``order + 1`` full-evaluation features of each sample and the Newton coefficients
    through them; :meth:`predict` evaluates the polynomial (order 0: the last feature itself)."""

    def __init__(self, order: int = 0) -> None:
        if isinstance(order, bool) or not isinstance(order, int) or order < 0:
            raise ValueError(f"forecast order must be an integer >= 0, got {order!r}")
        self.order = order
        self.clear()

    def clear(self) -> None:
        """Forget every stored feature (a new sampling run starts)."""
        self.values: Tensor | None = None  # [m + 1, B, ...] node features, newest first
        self.times: Tensor | None = None  # [m + 1, B] float64 node positions
        self.count: Tensor | None = None  # [B] how many nodes each sample has
        self.coefficients: Tensor | None = None  # [m + 1, B, ...] Newton coefficients

    @property
    def batch(self) -> int | None:
        """The number of samples stored (None when empty)."""
        return None if self.values is None else self.values.shape[1]

    def update(self, t: Tensor, feature: Tensor, rows: Tensor | None = None) -> None:
        """Store ``feature`` [n, ...] evaluated at positions ``t`` [n] for samples ``rows`` (all when
        None). A position equal to a sample's newest node replaces that node instead of adding one
        (two evaluations at one noise level, as Heun's step and the next step's first stage)."""
        feature = feature.detach()
        t = t.detach().to(device=feature.device, dtype=torch.float64)
        if self.values is None or (rows is None and feature.shape[0] != self.batch):
            if rows is not None:
                raise ValueError("the first update of a feature cache must hold the whole batch")
            m1, b = self.order + 1, feature.shape[0]
            self.values = feature.new_zeros((m1, *feature.shape))
            self.times = torch.zeros(m1, b, dtype=torch.float64, device=feature.device)
            self.count = torch.zeros(b, dtype=torch.long, device=feature.device)
            self.coefficients = torch.zeros_like(self.values)
        if rows is None:
            rows = torch.arange(self.batch, device=feature.device)
        values, times, count = self.values[:, rows], self.times[:, rows], self.count[rows]
        same = (count > 0) & (t == times[0])  # replace the newest node instead of shifting
        if self.order > 0:
            rows_same = same.view(1, -1, *([1] * (feature.ndim - 1)))
            older_values = torch.where(rows_same, values[1:], values[:-1])
            older_times = torch.where(same[None], times[1:], times[:-1])
        else:
            older_values, older_times = values[:0], times[:0]
        values = torch.cat([feature[None], older_values])
        times = torch.cat([t[None], older_times])
        count = torch.where(same, count, (count + 1).clamp(max=self.order + 1))
        self.values[:, rows], self.times[:, rows], self.count[rows] = values, times, count
        self.coefficients[:, rows] = _newton(values, times, count)

    def predict(self, t: Tensor, rows: Tensor | None = None) -> Tensor:
        """The forecast feature at positions ``t`` [n] for samples ``rows`` (all when None):
        P(t) = c_0 + (t - t_0)(c_1 + (t - t_1)(c_2 + ...)), by Horner's rule."""
        if self.coefficients is None:
            raise ValueError("the feature cache is empty: the first call of a run must be full")
        coefficients, times = self.coefficients, self.times
        if rows is not None:
            coefficients, times = coefficients[:, rows], times[:, rows]
        if coefficients.shape[1] != len(t):
            raise ValueError(
                f"the feature cache holds {coefficients.shape[1]} samples, asked for {len(t)}"
            )
        out = coefficients[-1]
        t = t.detach().to(device=times.device, dtype=torch.float64)
        for j in range(self.order - 1, -1, -1):
            factor = (t - times[j]).to(out.dtype).view(-1, *([1] * (out.ndim - 1)))
            out = coefficients[j] + factor * out
        return out


def _newton(values: Tensor, times: Tensor, count: Tensor) -> Tensor:
    """Newton coefficients F[t_0..t_j] of nodes (times, values), newest first; a coefficient whose
    nodes a sample does not have yet is 0, so it forecasts with the order its history allows."""
    d = list(values.unbind(0))
    m = len(d) - 1
    shape = (-1,) + (1,) * (values.ndim - 2)
    for j in range(1, m + 1):
        for i in range(m, j - 1, -1):
            gap = times[i - j] - times[i]
            # a node the sample lacks, or one revisited (Restart returns to earlier noise levels):
            # that term is dropped
            ok = (count > i) & (gap != 0)
            gap = torch.where(ok, gap, 1.0).to(values.dtype).view(shape)
            d[i] = torch.where(ok.view(shape), (d[i - 1] - d[i]) / gap, 0.0)
    valid = count[None] > torch.arange(m + 1, device=count.device)[:, None]
    return torch.where(valid.view(m + 1, *shape), torch.stack(d), 0.0)
