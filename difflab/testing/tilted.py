"""The exact KL-regularized optimum of reward fine-tuning on a Gaussian-mixture base model, the ground
truth that DDPO, DRaFT, DPOK and Diffusion-DPO are judged against (DESIGN.md, "Truth comes from exact
models").

    max_q E_q[r(x)] - beta KL(q || p)   is solved by   p*(x) = p(x) exp(r(x) / beta) / Z

(Rafailov et al. 2023, eq. 4; Fan et al. 2023 for diffusion). For p = sum_k pi_k N(mu_k, S_k) and a
linear or concave-enough quadratic reward, each component times exp(r / beta) is again a Gaussian
times a constant Z_k, so p* = sum_k (pi_k Z_k / sum_j pi_j Z_j) N(mu*_k, S*_k) is a mixture with the
same components, moved, shrunk and re-weighted: :func:`tilted`. The Bradley-Terry preference optimum
that DPO and Diffusion-DPO target is the same mixture (:func:`preference_optimum`). All arithmetic is
float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from difflab.core.tensors import as_tensor, check_finite
from difflab.testing.gmm import GaussianMixture

__all__ = ["LinearReward", "QuadraticReward", "mean_reward", "preference_optimum", "tilted"]


def _check_input(x: Tensor, dim: int) -> None:
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"the reward takes x [B, {dim}], got shape {tuple(x.shape)}")


@dataclass(frozen=True, eq=False)
class LinearReward:
    """r(x) = w . x + c for x [B, D] -> [B] (differentiable, in x's dtype)."""

    w: Tensor
    c: float = 0.0

    def __post_init__(self) -> None:
        w = check_finite(as_tensor(self.w, torch.float64), "w")
        if w.ndim != 1 or len(w) == 0:
            raise ValueError(f"w must be a vector [D], got shape {tuple(w.shape)}")
        object.__setattr__(self, "w", w)
        object.__setattr__(self, "c", float(self.c))

    @property
    def dim(self) -> int:
        return len(self.w)

    def __call__(self, x: Tensor) -> Tensor:
        _check_input(x, self.dim)
        return x @ self.w.to(x) + self.c


@dataclass(frozen=True, eq=False)
class QuadraticReward:
    """r(x) = -1/2 (x - a)^T Q (x - a) + c for x [B, D] -> [B] (Q symmetric [D, D]; differentiable)."""

    Q: Tensor
    a: Tensor
    c: float = 0.0

    def __post_init__(self) -> None:
        q = check_finite(as_tensor(self.Q, torch.float64), "Q")
        a = check_finite(as_tensor(self.a, torch.float64), "a")
        if a.ndim != 1 or len(a) == 0 or q.shape != (len(a), len(a)):
            raise ValueError(
                f"Q must be [D, D] and a [D], got {tuple(q.shape)} and {tuple(a.shape)}"
            )
        if not torch.allclose(q, q.T, atol=1e-12):
            raise ValueError("Q must be symmetric")
        object.__setattr__(self, "Q", q)
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "c", float(self.c))

    @property
    def dim(self) -> int:
        return len(self.a)

    def __call__(self, x: Tensor) -> Tensor:
        _check_input(x, self.dim)
        d = x - self.a.to(x)
        return -0.5 * ((d @ self.Q.to(x)) * d).sum(-1) + self.c


Reward = LinearReward | QuadraticReward


def _check(p: GaussianMixture, reward: Reward) -> None:
    if p.batch is not None:
        raise ValueError(f"need one mixture, this is a batch of {p.batch}: take .mixture(b)")
    if not isinstance(reward, LinearReward | QuadraticReward):
        raise ValueError(
            f"the closed form needs a LinearReward or QuadraticReward, got {type(reward).__name__}"
        )
    if reward.dim != p.dim:
        raise ValueError(f"the reward is on R^{reward.dim} but the mixture on R^{p.dim}")


def tilted(p: GaussianMixture, reward: Reward, beta: float) -> GaussianMixture:
    """p*(x) = p(x) exp(r(x) / beta) / Z, the optimum of max_q E_q[r] - beta KL(q || p), exact
    (Rafailov et al. 2023, eq. 4); beta = inf gives p. Component k, N(mu, S) with weight pi, becomes:

    linear r = w.x + c:  N(mu + S w / beta, S),  weight ∝ pi exp(w.mu / beta + w^T S w / (2 beta^2))
    (the Gaussian moment generating function).

    quadratic r = -1/2 (x - a)^T Q (x - a) + c, with P = Q / beta:  precision S*^-1 = S^-1 + P (must
    be positive definite: Q PSD, or beta large enough), mean mu* = S* (S^-1 mu + P a) = mu - S* P d
    with d = mu - a, and weight ∝ pi Z_k, completing the square in the exponent:

        Z_k = int N(x; mu, S) exp(-1/2 (x - a)^T P (x - a)) dx
            = det(I + S P)^-1/2 exp(-1/2 d^T (P - P S* P) d)

    (P - P S* P = (S + P^-1)^-1 by Woodbury when Q is invertible: Z_k is then N(a; mu, S + beta Q^-1)
    up to a factor common to all k; exp(c / beta) is common too and cancels).
    """
    _check(p, reward)
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (inf for no tilt), got {beta}")
    means, covs = p.means, p.covariances
    if isinstance(reward, LinearReward):
        w = reward.w / beta
        shift = covs @ w
        log_z = means @ w + 0.5 * (shift @ w)
        kept = p.variances if p.basis is None else covs
        return GaussianMixture(
            torch.softmax(torch.log(p.weights) + log_z, 0), means + shift, kept, p.labels
        )
    prec = reward.Q / beta
    chol_s = torch.linalg.cholesky(covs)  # S = L L^T
    m = torch.eye(p.dim, dtype=torch.float64) + chol_s.mT @ prec @ chol_s  # L^T (S^-1 + P) L
    chol_m, info = torch.linalg.cholesky_ex(m)
    if bool((info > 0).any()):
        k = int((info > 0).nonzero()[0])
        raise ValueError(
            f"S_k^-1 + Q / beta is not positive definite for component {k}: the quadratic reward "
            f"grows too fast (use a positive semi-definite Q or a larger beta than {beta})"
        )
    cov = chol_s @ torch.cholesky_solve(chol_s.mT, chol_m)  # S* = L M^-1 L^T
    cov = (cov + cov.mT) / 2
    pd = (means - reward.a) @ prec  # P d, [K, D]
    mean = means - (cov @ pd[..., None])[..., 0]
    maha = (pd * (means - reward.a)).sum(-1) - (pd[:, None, :] @ cov @ pd[..., None])[:, 0, 0]
    logdet = 2 * torch.log(torch.diagonal(chol_m, dim1=-2, dim2=-1)).sum(-1)  # log det(I + S P)
    log_z = -0.5 * (logdet + maha)
    return GaussianMixture(torch.softmax(torch.log(p.weights) + log_z, 0), mean, cov, p.labels)


def preference_optimum(p: GaussianMixture, reward: Reward, beta: float) -> GaussianMixture:
    """The DPO optimum under Bradley-Terry preferences P(x1 > x2) = sigmoid(r(x1) - r(x2)): its implicit
    reward beta log(q / p) equals r up to a constant, so q = p exp(r / beta) / Z = tilted(p, r, beta)
    (Rafailov et al. 2023, sec. 4; Wallace et al. 2023, Diffusion-DPO).

    beta is the KL coefficient of Diffusion-DPO's objective max E[r(x0)] - beta KL(p_theta(x_0:T) ||
    p_ref(x_0:T)) on whole chains; its x0-marginal optimum is this one, since the chain optimum keeps
    p_ref(x_1:T | x0). The "beta T omega(lambda_t)" of their final loss is that beta times the T steps
    (the sum over steps written as T E_t) times the ELBO weight, not another temperature; the official
    code's --beta_dpo (5000) multiplies -1/2 the per-element mean squared errors, so for D elements
    beta = beta_dpo / (2 T omega(lambda_t) D). Preferences sigmoid((r(x1) - r(x2)) / tau) give
    preference_optimum(p, r, beta * tau).
    """
    return tilted(p, reward, beta)


def mean_reward(p: GaussianMixture, reward: Reward) -> float:
    """E_p[r(x)] in closed form: w . E[x] + c (linear), -1/2 sum_k pi_k (tr(Q S_k) + (mu_k - a)^T Q
    (mu_k - a)) + c (quadratic)."""
    _check(p, reward)
    if isinstance(reward, LinearReward):
        return float(p.mean @ reward.w) + reward.c
    d = p.means - reward.a
    spread = torch.einsum("ij,kji->k", reward.Q, p.covariances) + ((d @ reward.Q) * d).sum(-1)
    return float(-0.5 * (p.weights @ spread)) + reward.c
