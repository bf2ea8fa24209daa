"""The exact Gaussian-mixture model: closed-form denoiser, score, density, probability-flow ODE and
linear-measurement posterior, the ground truth every sampler, schedule, guidance and inversion method
in difflab is judged against (DESIGN.md, "Truth comes from exact models").

p(x0) = sum_k w_k N(m_k, C_k); the noised marginal of x = x0 + sigma eps is sum_k w_k N(m_k, C_k + sigma^2 I).
With C_k = U_k diag(lam_k) U_k^T and z_k = U_k^T (x - m_k), per component

    E[x0 | x, k] = m_k + U_k diag(lam_k / (lam_k + sigma^2)) z_k
    score_k      = -U_k diag(1 / (lam_k + sigma^2)) z_k

so nothing divides by sigma: sigma = 0 is exact. All arithmetic is float64; outputs take x's dtype.

Conditioning on some coordinates, x0[g] = v, leaves a Gaussian mixture over the others (each
component conditioned by its Schur complement, re-weighted by its density of v): :meth:`conditional`
(a batch of mixtures for a batch of values), with the exact conditional denoisers built on it,
:meth:`context_denoiser` (E[a0 | a, o], a policy's truth) and :meth:`denoise_given` (given entries,
a mask per sample: inpainting, imputation).
At sigma = inf, x holds the unit noise (DESIGN.md's convention) and the denoiser returns the prior mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from difflab.core.dopri import DP_A, DP_B, DP_C, DP_E
from difflab.core.tensors import as_tensor, check_nonnegative

__all__ = ["FlowSolution", "GaussianMixture", "gaussian", "random_mixture", "ring2d", "stiff"]

_LOG_2PI = math.log(2 * math.pi)


def _per_sample(sigma: Tensor | float) -> Tensor:
    """A noise level as a scalar or one per sample [B] (a per-sample sigma [B, 1, ...] squeezed)."""
    s = as_tensor(sigma, torch.float64)
    return s.reshape(s.shape[0]) if s.ndim > 1 else s


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

    A batch of B mixtures that share their covariances has means [B, K, d] and weights [K] or
    [B, K] (the conditional mixtures of :meth:`conditional`, one per conditioning value): its
    denoiser, score and density take x [B, d], row b under mixture b, and :meth:`sample` draws one
    sample per mixture; :meth:`mixture` is mixture b alone.
    """

    def __init__(
        self,
        weights: Tensor,
        means: Tensor,
        covs: Tensor | float,
        labels: Tensor | None = None,
    ) -> None:
        means = as_tensor(means, torch.float64)
        if means.ndim not in (2, 3):
            raise ValueError(f"means must be [K, d] or [B, K, d], got shape {tuple(means.shape)}")
        k, d = means.shape[-2:]
        weights = as_tensor(weights, torch.float64)
        shapes = [(k,)] if means.ndim == 2 else [(k,), (means.shape[0], k)]
        if (
            weights.shape not in shapes
            or bool((weights < 0).any())
            or bool((weights.sum(-1) <= 0).any())
        ):
            rows = " or ".join("x".join(map(str, shape)) for shape in shapes)
            raise ValueError(f"weights must be {rows} non-negative numbers with a positive sum")
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
        self.weights = (
            weights / weights.sum() if weights.ndim == 1 else weights / weights.sum(-1)[:, None]
        )
        self.means = means
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        if self.labels is not None and self.labels.shape != (k,):
            raise ValueError(f"labels must hold one class per component ({k})")

    # ------------------------------------------------------------------ structure
    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    @property
    def num_components(self) -> int:
        return self.means.shape[-2]

    @property
    def batch(self) -> int | None:
        """B for a batch of mixtures (means [B, K, d]), None for one mixture."""
        return self.means.shape[0] if self.means.ndim == 3 else None

    def _single(self, what: str) -> None:
        if self.batch is not None:
            raise ValueError(
                f"{what} needs one mixture, this is a batch of {self.batch}: take .mixture(b)"
            )

    def mixture(self, b: int) -> GaussianMixture:
        """Mixture b of a batch of mixtures, alone."""
        if self.batch is None:
            raise ValueError("this is one mixture, not a batch")
        weights = self.weights if self.weights.ndim == 1 else self.weights[b]
        covs = self.variances if self.basis is None else self.covariances
        return GaussianMixture(weights, self.means[b], covs, self.labels)

    @property
    def covariances(self) -> Tensor:
        """[K, d, d] full covariance matrices."""
        if self.basis is None:
            return torch.diag_embed(self.variances)
        return self.basis @ torch.diag_embed(self.variances) @ self.basis.mT

    @property
    def mean(self) -> Tensor:
        """sum_k w_k m_k ([d], or [B, d] for a batch of mixtures)."""
        if self.batch is None:
            return self.weights @ self.means
        return (self.weights[..., None] * self.means).sum(-2)

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
        if x.ndim != 2 or x.shape[1] != self.dim or self.batch not in (None, x.shape[0]):
            rows = "B" if self.batch is None else f"{self.batch} (one per mixture)"
            raise ValueError(f"x must be [{rows}, {self.dim}], got shape {tuple(x.shape)}")
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
        """Exact samples x0 ~ p (float64); for a batch of mixtures n must be B, sample b drawn from
        mixture b."""
        if self.batch is None:
            k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
            means = self.means[k]
        else:
            if n != self.batch:
                raise ValueError(
                    f"a batch of {self.batch} mixtures draws {self.batch} samples, not {n}"
                )
            weights = self.weights.expand(n, self.num_components)
            k = torch.multinomial(weights, 1, generator=generator)[:, 0]
            means = self.means[torch.arange(n), k]
        white = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        white = white * self.variances[k].sqrt()
        if self.basis is not None:
            white = (self.basis[k] @ white.unsqueeze(-1)).squeeze(-1)
        x = means + white
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
        self._single("the exact flow")
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
        self._single("posterior")
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
        self._single("condition")
        if self.labels is None:
            raise ValueError("this mixture has no component labels")
        keep = self.labels == label
        if not bool(keep.any()):
            raise ValueError(
                f"no component has label {label}; labels are {sorted(set(self.labels.tolist()))}"
            )
        covs = self.variances[keep] if self.basis is None else self.covariances[keep]
        return GaussianMixture(self.weights[keep], self.means[keep], covs, self.labels[keep])

    def _split(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        """(given, rest): the validated coordinates ``indices`` and the others, in increasing order."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if (
            len(idx) == 0
            or len(idx) >= self.dim
            or len(set(idx.tolist())) < len(idx)
            or bool(((idx < 0) | (idx >= self.dim)).any())
        ):
            raise ValueError(
                f"indices must be distinct coordinates in [0, {self.dim - 1}], at least one and "
                f"fewer than {self.dim}, got {idx.tolist()}"
            )
        rest = torch.ones(self.dim, dtype=torch.bool)
        rest[idx] = False
        return idx, rest.nonzero()[:, 0]

    def conditional(self, indices: Sequence[int] | Tensor, values: Tensor) -> GaussianMixture:
        """p(x0[rest] | x0[indices] = values), exact: component k has mean m_r + C_rg C_gg^-1 (v - m_g),
        covariance C_rr - C_rg C_gg^-1 C_gr (the Schur complement, independent of v) and weight
        proportional to w_k N(v; m_g, C_gg) (Bishop 2006, secs. 2.3.1 and 2.3.9); rest = the other
        coordinates in increasing order. ``values`` [m] (in the order of ``indices``) gives one
        mixture, [B, m] a batch of B mixtures, one per row."""
        self._single("conditional")
        g, r = self._split(indices)
        values = as_tensor(values, torch.float64)
        if values.shape[-1:] != (len(g),) or values.ndim not in (1, 2):
            raise ValueError(
                f"values must be [{len(g)}] or [B, {len(g)}] (one per index), got "
                f"{tuple(values.shape)}"
            )
        batch = values.reshape(-1, len(g))
        cov = self.covariances
        c_gg, c_rg, c_rr = cov[:, g][:, :, g], cov[:, r][:, :, g], cov[:, r][:, :, r]
        chol = torch.linalg.cholesky(c_gg)
        gain = torch.cholesky_solve(c_rg.mT, chol).mT  # C_rg C_gg^-1 [K, r, m]
        schur = c_rr - gain @ c_rg.mT
        resid = batch[:, None, :] - self.means[:, g]  # [B, K, m]
        means = self.means[:, r] + (gain @ resid[..., None])[..., 0]
        maha = (torch.cholesky_solve(resid[..., None], chol)[..., 0] * resid).sum(-1)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        log_w = torch.log(self.weights) - 0.5 * (maha + logdet + len(g) * _LOG_2PI)
        weights = torch.softmax(log_w, -1)
        if values.ndim == 1:
            weights, means = weights[0], means[0]
        return GaussianMixture(weights, means, (schur + schur.mT) / 2, self.labels)

    def context_denoiser(self, indices: Sequence[int] | Tensor) -> Callable[..., Tensor]:
        """D(x, sigma, context) = E[x0[rest] | x, x0[indices] = context], the exact denoiser of the
        conditional model p(a | o) (:meth:`conditional`, one mixture per sample): x holds the other
        coordinates in increasing order ([B, ...], flattened per sample, e.g. a sequence [B, T, D]
        row-major), context the given ones in the order of ``indices`` ([B, ...] likewise)."""
        self._split(indices)

        def denoise(x: Tensor, sigma: Tensor | float, context: Tensor) -> Tensor:
            flat = self.conditional(indices, context.reshape(context.shape[0], -1))
            return flat.denoise(x.reshape(x.shape[0], -1), _per_sample(sigma)).reshape(x.shape)

        return denoise

    def denoise_given(
        self, x: Tensor, sigma: Tensor | float, mask: Tensor, given: Tensor
    ) -> Tensor:
        """E[x0 | x, x0[m] = g] per sample: g on its given entries (mask 1) and, on the others, the
        denoiser of :meth:`conditional` on the given values at x there; masks may differ across
        samples (CSDI's observed entries, Tashiro et al. 2021). x, mask and given are [B, d]."""
        if mask.shape != x.shape or given.shape != x.shape:
            raise ValueError(
                f"mask and given must have x's shape {tuple(x.shape)}, got {tuple(mask.shape)} "
                f"and {tuple(given.shape)}"
            )
        s = _per_sample(sigma).to(x.device)
        s = s.expand(x.shape[0]) if s.ndim == 0 else s
        m = mask.bool()
        out = torch.where(m, given.double(), x.double())
        patterns, which = torch.unique(m, dim=0, return_inverse=True)
        for j, pattern in enumerate(patterns):
            rows = which == j
            g, r = pattern.nonzero()[:, 0], (~pattern).nonzero()[:, 0]
            if len(r) == 0:
                continue
            if len(g) == 0:
                out[rows] = self.denoise(x[rows], s[rows]).double()
                continue
            part = self.conditional(g, given[rows][:, g])
            out[rows.nonzero(), r] = part.denoise(x[rows][:, r], s[rows]).double()
        return out.to(x.dtype)


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
