"""A linear-Gaussian inverse problem on an exact mixture prior: y = A x0 + noise_std n, with the exact
posterior p(x0 | y) and evidence p(y) in closed form (the ground truth of difflab.restoration)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from difflab.testing.gmm import GaussianMixture

__all__ = ["LinearGaussianProblem", "projection_problem"]


@dataclass(frozen=True)
class LinearGaussianProblem:
    """Prior p(x0) (a mixture in R^d), y = A x0 + noise_std n for A [m, d], and the measurement y [m]."""

    prior: GaussianMixture
    matrix: Tensor
    noise_std: float
    y: Tensor

    @property
    def posterior(self) -> GaussianMixture:
        """p(x0 | y), exact (GaussianMixture.posterior)."""
        return self.prior.posterior(self.matrix, self.y, self.noise_std)

    @property
    def log_evidence(self) -> float:
        """log p(y): y is itself a mixture, sum_k w_k N(A m_k, A C_k A^T + noise_std^2 I)."""
        a, p = self.matrix, self.prior
        noise = self.noise_std**2 * torch.eye(len(a), dtype=torch.float64)
        measured = GaussianMixture(p.weights, p.means @ a.T, a @ p.covariances @ a.T + noise)
        return float(measured.log_prob(self.y[None]))


def projection_problem(seed: int = 19, noise_std: float = 0.2) -> LinearGaussianProblem:
    """A 3-component diagonal mixture in R^4 (means ~ N(0, I), variances in [0.05, 0.35]) seen through
    a random 2 x 4 projection with N(0, 1/2) entries, y drawn from the model. The default seed gives two well-separated posterior modes (weights 0.65 / 0.35, 3.3
    apart, stds <= 0.52): a method must weigh the modes right."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(3, 4, generator=g, dtype=torch.float64)
    variances = 0.05 + 0.3 * torch.rand(3, 4, generator=g, dtype=torch.float64)
    prior = GaussianMixture(torch.tensor([0.3, 0.3, 0.4]), means, variances)
    a = torch.randn(2, 4, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    a = a / math.sqrt(2)
    x0 = prior.sample(1, generator=g)
    y = x0[0] @ a.T + noise_std * torch.randn(2, generator=g, dtype=torch.float64)
    return LinearGaussianProblem(prior, a, noise_std, y)
