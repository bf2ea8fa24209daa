"""The exact Gaussian-mixture model: closed-form denoiser, score, density, probability-flow ODE and
linear-measurement posterior, the ground truth every sampler, schedule, guidance and inversion method
in difflab is judged against (DESIGN.md, "Truth comes from exact models").

p(x0) = sum_k w_k N(m_k, C_k); the noised marginal of x = x0 + sigma eps is sum_k w_k N(m_k, C_k + sigma^2 I).
With C_k = U_k diag(lam_k) U_k^T and z_k = U_k^T (x - m_k), per component

    E[x0 | x, k] = m_k + U_k diag(lam_k / (lam_k + sigma^2)) z_k
    score_k      = -U_k diag(1 / (lam_k + sigma^2)) z_k

so nothing divides by sigma: sigma = 0 is exact. All arithmetic is float64; outputs take x's dtype.
At sigma = inf, x holds the unit noise (DESIGN.md's convention) and the denoiser returns the prior mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from difflab.core.dopri import DP_A, DP_B, DP_C, DP_E
from difflab.core.tensors import as_tensor, check_nonnegative

__all__ = ["FlowSolution", "GaussianMixture", "gaussian", "random_mixture", "ring2d", "stiff"]

_LOG_2PI = math.log(2 * math.pi)


def _mix(log_r: Tensor, per_component: Tensor) -> Tensor:
    """sum_k r_k v_k for responsibilities exp(log_r) [B, K] and v [B, K, d]."""
    return (log_r.exp().unsqueeze(-1) * per_component).sum(1)


@dataclass(frozen=True)
class FlowSolution:
    """The probability-flow ODE solution (float64) and the integrator's work."""

    x: Tensor
    steps: int  # adaptive steps taken by the slowest sample
    evaluations: int  # score evaluations, summed over samples


class GaussianMixture:
    """A Gaussian mixture in R^d with full or diagonal covariances; callable as an exact denoiser.

    ``covs`` is [K, d, d] (full), [K, d] (diagonal variances) or a float (isotropic variance).
    ``labels`` optionally assigns a class to each component (for conditional models).
    """

    def __init__(
        self,
        weights: Tensor,
        means: Tensor,
        covs: Tensor | float,
        labels: Tensor | None = None,
    ) -> None:
        means = as_tensor(means, torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must be [K, d], got shape {tuple(means.shape)}")
        k, d = means.shape
        weights = as_tensor(weights, torch.float64)
        if weights.shape != (k,) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError(f"weights must be {k} non-negative numbers with a positive sum")
        covs = as_tensor(covs, torch.float64)
        if covs.ndim == 0:
            covs = covs.expand(k, d)
        if covs.shape == (k, d):
            self.basis, self.variances = None, covs.clone()
        elif covs.shape == (k, d, d):
            if not torch.allclose(covs, covs.mT, atol=1e-12):
                raise ValueError("covariances must be symmetric")
            self.variances, self.basis = torch.linalg.eigh(covs)
        else:
            raise ValueError(f"covs must be a float, [K, d] or [K, d, d] with K={k}, d={d}")
        if not bool((self.variances > 0).all()):
            raise ValueError("covariances must be positive definite")
        self.weights = weights / weights.sum()
        self.means = means
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        if self.labels is not None and self.labels.shape != (k,):
            raise ValueError(f"labels must hold one class per component ({k})")

    # ------------------------------------------------------------------ structure
    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def covariances(self) -> Tensor:
        """[K, d, d] full covariance matrices."""
        if self.basis is None:
            return torch.diag_embed(self.variances)
        return self.basis @ torch.diag_embed(self.variances) @ self.basis.mT

    @property
    def mean(self) -> Tensor:
        return self.weights @ self.means

    def _rotate(self, v: Tensor) -> Tensor:
        """U_k^T v for v [B, K, d]."""
        return v if self.basis is None else (v.unsqueeze(-2) @ self.basis).squeeze(-2)

    def _unrotate(self, v: Tensor) -> Tensor:
        """U_k v for v [B, K, d]."""
        return v if self.basis is None else (self.basis @ v.unsqueeze(-1)).squeeze(-1)

    # ------------------------------------------------------------------ the exact noised marginal
    def _components(
        self, x: Tensor, sigma: Tensor | float, log_weights: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(z [B,K,d], v = lam + sigma^2 [B,K,d], log responsibilities [B,K], log p [B]) at x,
        under the mixture's weights or softmax(``log_weights``) ([K] or one row per sample)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be [B, {self.dim}], got shape {tuple(x.shape)}")
        x = x.double()
        s = check_nonnegative(as_tensor(sigma, torch.float64).to(x.device))
        if s.ndim > 1 or (s.ndim == 1 and s.shape[0] not in (1, x.shape[0])):
            raise ValueError(f"sigma must be a scalar or one value per sample [{x.shape[0]}]")
        s = s.reshape(-1, 1, 1)
        z = self._rotate(x[:, None, :] - self.means)
        v = self.variances + s.square()
        log_lik = -0.5 * (z.square() / v + torch.log(v) + _LOG_2PI).sum(-1)
        prior = torch.log(self.weights)
        if log_weights is not None:
            log_weights = torch.as_tensor(log_weights, device=x.device)
            if log_weights.shape not in ((self.num_components,), (x.shape[0], self.num_components)):
                raise ValueError(
                    f"log_weights must be [{self.num_components}] or [{x.shape[0]}, "
                    f"{self.num_components}], got shape {tuple(log_weights.shape)}"
                )
            prior = torch.log_softmax(log_weights.double(), -1)
        logits = prior + log_lik
        logits = torch.where(torch.isinf(s[..., 0]), prior, logits)
        log_p = torch.logsumexp(logits, -1)
        return z, v, logits - log_p[:, None], log_p

    def denoise(
        self, x: Tensor, sigma: Tensor | float, log_weights: Tensor | None = None
    ) -> Tensor:
        """E[x0 | x] = sum_k r_k(x) (m_k + C_k (C_k + sigma^2 I)^-1 (x - m_k)).

        ``log_weights`` ([K] or [B, K], up to a constant; differentiable) re-weights the components,
        per sample if given per sample: a continuous condition for the exact model (-inf rows off
        other classes give :meth:`condition`'s denoiser; the mixture's own log weights the
        unconditional one)."""
        z, v, log_r, _ = self._components(x, sigma, log_weights)
        shrunk = self._unrotate(self.variances / v * z)
        return _mix(log_r, self.means + shrunk).to(x.dtype)

    __call__ = denoise

    def class_denoiser(
        self,
        x: Tensor,
        sigma: Tensor | float,
        labels: Tensor | None = None,
        log_weights: Tensor | None = None,
    ) -> Tensor:
        """E[x0 | x, label] per sample: label c >= 0 the mixture of class c's components (as
        :meth:`condition`), -1 or None all of them (the null class of classifier-free guidance);
        without labels, ``log_weights`` as in :meth:`denoise`."""
        if labels is not None:
            if self.labels is None:
                raise ValueError("this mixture has no component labels")
            labels = torch.as_tensor(labels, device=x.device)
            keep = (self.labels.to(x.device) == labels[:, None]) | (labels[:, None] < 0)
            if not bool(keep.any(1).all()):
                bad = int(labels[~keep.any(1)][0])
                raise ValueError(
                    f"no component has label {bad}; labels are {sorted(set(self.labels.tolist()))}"
                )
            log_weights = torch.log(self.weights).masked_fill(~keep, -math.inf)
        return self.denoise(x, sigma, log_weights)

    def score(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """grad_x log p_sigma(x) = -sum_k r_k (C_k + sigma^2 I)^-1 (x - m_k)."""
        z, v, log_r, _ = self._components(x, sigma)
        return -_mix(log_r, self._unrotate(z / v)).to(x.dtype)

    def eps(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """E[eps | x] = (x - D(x)) / sigma = -sigma score, computed without dividing by sigma."""
        s = as_tensor(sigma, torch.float64).to(x.device)
        s_col = s.reshape(-1, 1) if s.ndim == 1 else s
        out = -s_col * self.score(x, sigma).double()
        return torch.where(torch.isinf(s_col), x.double(), out).to(x.dtype)

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """log p_sigma(x) of the noised marginal (nats)."""
        return self._components(x, sigma)[3].to(x.dtype)

    # ------------------------------------------------------------------ sampling
    def sample(
        self, n: int, generator: torch.Generator | None = None, return_components: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Exact samples x0 ~ p (float64)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        white = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        white = white * self.variances[k].sqrt()
        if self.basis is not None:
            white = (self.basis[k] @ white.unsqueeze(-1)).squeeze(-1)
        x = self.means[k] + white
        return (x, k) if return_components else x

    # ------------------------------------------------------------------ the probability-flow ODE
    def ode(
        self,
        x: Tensor,
        sigma_from: Tensor | float,
        sigma_to: Tensor | float,
        rtol: float = 1e-10,
        max_steps: int = 100_000,
    ) -> FlowSolution:
        """The exact probability-flow ODE dx/dsigma = -sigma score(x, sigma) (Song et al. 2021) from
        sigma_from to sigma_to (either direction, finite, shared or one per sample).

        Integrated in u = log(sigma^2 + c), c the smallest component variance, where each Gaussian's
        flow x - m ~ sqrt(lam + sigma^2) is smooth, by Dormand-Prince 5(4) with a step size per sample
        (so a sample near a decision boundary does not slow the others); the local error per step is
        held below rtol * (1 + |x|). The tests validate it by tightening rtol and against closed forms.
        """
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be [B, {self.dim}], got shape {tuple(x.shape)}")
        n = x.shape[0]
        s0 = check_nonnegative(as_tensor(sigma_from, torch.float64), "sigma_from").expand(n)
        s1 = check_nonnegative(as_tensor(sigma_to, torch.float64), "sigma_to").expand(n)
        if bool(torch.isinf(s0).any() | torch.isinf(s1).any()):
            raise ValueError("the exact flow needs finite sigma_from and sigma_to")
        c = float(self.variances.min())
        u, u_end = torch.log(s0.square() + c), torch.log(s1.square() + c)
        h = torch.sign(u_end - u) * 0.05
        y = x.double().clone()

        def rhs(xa: Tensor, ua: Tensor) -> Tensor:  # dx/du = -(sigma^2 + c) / 2 * score
            tau = (torch.exp(ua) - c).clamp(min=0)
            return -0.5 * (tau + c)[:, None] * self.score(xa, tau.sqrt()).double()

        active = torch.nonzero(u != u_end).flatten()
        steps = evaluations = 0
        while len(active):
            if steps >= max_steps:
                raise RuntimeError(
                    f"exact flow did not converge in {max_steps} steps (rtol={rtol})"
                )
            xa, ua, rest = y[active], u[active], u_end[active] - u[active]
            ha = torch.sign(rest) * torch.minimum(h[active].abs(), rest.abs())
            ks: list[Tensor] = []
            for a_row, c_i in zip(DP_A, DP_C):
                xi = xa + ha[:, None] * sum(a * k for a, k in zip(a_row, ks)) if ks else xa
                ks.append(rhs(xi, ua + c_i * ha))
            x_new = xa + ha[:, None] * sum(b * k for b, k in zip(DP_B, ks))
            err = ha[:, None] * sum(e * k for e, k in zip(DP_E, ks))
            ratio = (err.abs() / (rtol * (1 + torch.maximum(xa.abs(), x_new.abs())))).amax(1)
            ok = ratio <= 1
            y[active[ok]], u[active[ok]] = (
                x_new[ok],
                torch.where(rest.abs() <= ha.abs(), u_end[active], ua + ha)[ok],
            )
            h[active] = ha * (0.9 * ratio.clamp(min=1e-12) ** -0.2).clamp(0.2, 5.0)
            active = active[u[active] != u_end[active]]
            steps, evaluations = steps + 1, evaluations + 7 * len(xa)
        return FlowSolution(y, steps, evaluations)

    # ------------------------------------------------------------------ conditioning
    def posterior(self, A: Tensor, y: Tensor, noise_std: float | Tensor) -> GaussianMixture:
        """The exact posterior p(x0 | y) for y = A x0 + n, n ~ N(0, noise_std^2 I) (or a covariance).

        Component k: S = A C A^T + Sn, G = C A^T S^-1, mean m + G (y - A m), cov C - G A C, weight
        w N(y; A m, S).
        """
        A = as_tensor(A, torch.float64)
        y = as_tensor(y, torch.float64)
        if A.ndim != 2 or A.shape[1] != self.dim or y.shape != (A.shape[0],):
            raise ValueError(
                f"A must be [m, {self.dim}] and y [m]; got {tuple(A.shape)}, {tuple(y.shape)}"
            )
        noise = as_tensor(noise_std, torch.float64)
        noise_cov = (
            noise.square() * torch.eye(len(y), dtype=torch.float64) if noise.ndim == 0 else noise
        )
        cov = self.covariances
        big_s = A @ cov @ A.T + noise_cov
        gain = torch.linalg.solve(big_s, A @ cov).mT  # C A^T S^-1 (S, C symmetric)
        resid = y - self.means @ A.T
        means = self.means + (gain @ resid.unsqueeze(-1)).squeeze(-1)
        covs = cov - gain @ A @ cov
        covs = (covs + covs.mT) / 2
        chol = torch.linalg.cholesky(big_s)
        maha = torch.cholesky_solve(resid[..., None], chol)[..., 0].mul(resid).sum(-1)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        log_w = torch.log(self.weights) - 0.5 * (maha + logdet + len(y) * _LOG_2PI)
        return GaussianMixture(torch.softmax(log_w, 0), means, covs, self.labels)

    def condition(self, label: int) -> GaussianMixture:
        """The mixture of the components of one class, p(x0 | label)."""
        if self.labels is None:
            raise ValueError("this mixture has no component labels")
        keep = self.labels == label
        if not bool(keep.any()):
            raise ValueError(
                f"no component has label {label}; labels are {sorted(set(self.labels.tolist()))}"
            )
        covs = self.variances[keep] if self.basis is None else self.covariances[keep]
        return GaussianMixture(self.weights[keep], self.means[keep], covs, self.labels[keep])


# ---------------------------------------------------------------------- ready-made mixtures


def gaussian(mean: Tensor, cov: Tensor | float) -> GaussianMixture:
    """A single Gaussian N(mean, cov)."""
    mean = as_tensor(mean, torch.float64)
    cov = as_tensor(cov, torch.float64)
    return GaussianMixture(torch.ones(1), mean[None], cov[None] if cov.ndim else cov)


def ring2d(modes: int = 8, radius: float = 1.0, std: float = 0.05) -> GaussianMixture:
    """``modes`` equal, sharp isotropic modes on a circle; component i has label i."""
    angle = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    means = radius * torch.stack([angle.cos(), angle.sin()], 1)
    return GaussianMixture(torch.ones(modes), means, std**2, labels=torch.arange(modes))


def stiff(
    dim: int = 64, components: int = 4, std_min: float = 0.03, std_max: float = 1.0, seed: int = 0
) -> GaussianMixture:
    """A stiff mixture: diagonal covariances whose per-axis std spans [std_min, std_max] log-uniformly
    (each component a different permutation), means at distance ~1 per axis scale."""
    g = torch.Generator().manual_seed(seed)
    stds = torch.logspace(math.log10(std_min), math.log10(std_max), dim, dtype=torch.float64)
    variances = torch.stack(
        [stds[torch.randperm(dim, generator=g)] for _ in range(components)]
    ).square()
    means = torch.randn(components, dim, generator=g, dtype=torch.float64) * 0.5
    weights = torch.rand(components, generator=g, dtype=torch.float64) + 0.5
    return GaussianMixture(weights, means, variances, labels=torch.arange(components))


def random_mixture(
    dim: int, components: int, seed: int = 0, scale: float = 2.0, min_variance: float = 0.01
) -> GaussianMixture:
    """A random mixture with full covariances (random rotations, eigenvalues log-uniform in
    [min_variance, 1]) and means ~ N(0, scale^2 I)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(components, dim, dim, generator=g, dtype=torch.float64))
    lam = min_variance ** torch.rand(components, dim, generator=g, dtype=torch.float64)
    covs = q @ torch.diag_embed(lam) @ q.mT
    means = scale * torch.randn(components, dim, generator=g, dtype=torch.float64)
    weights = torch.rand(components, generator=g, dtype=torch.float64) + 0.2
    return GaussianMixture(weights, means, (covs + covs.mT) / 2, labels=torch.arange(components))
