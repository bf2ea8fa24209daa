"""The exact Gaussian-mixture testbed, checked against independent truths: autograd of its own density,
quadrature, scipy, closed-form Gaussian flows, brute-force posteriors and sampling statistics. float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from difflab.testing import GaussianMixture, gaussian, random_mixture, ring2d, stiff

MIXTURES = {
    "random3d": lambda: random_mixture(dim=3, components=4, seed=2),
    "stiff8": lambda: stiff(dim=8, components=3, seed=1),
    "ring2d": lambda: ring2d(),
}
_cache: dict = {}


def _mixture(name: str) -> GaussianMixture:
    if name not in _cache:
        _cache[name] = MIXTURES[name]()
    return _cache[name]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _noised(gm: GaussianMixture, n: int, sigma, seed: int) -> torch.Tensor:
    g = _gen(seed)
    s = torch.as_tensor(sigma, dtype=torch.float64)
    s = s[:, None] if s.ndim == 1 else s
    return gm.sample(n, generator=g) + s * torch.randn(n, gm.dim, generator=g, dtype=torch.float64)


def _mixture_cov(gm: GaussianMixture) -> torch.Tensor:
    """Cov[x0] = sum_k w_k (C_k + m_k m_k^T) - mu mu^T."""
    second = torch.einsum("k,kij->ij", gm.weights, gm.covariances) + torch.einsum(
        "k,ki,kj->ij", gm.weights, gm.means, gm.means
    )
    return second - torch.outer(gm.mean, gm.mean)


def _rotated_gaussian(seed: int = 0):
    """N(m, C) in 3-D with eigenvalues spanning 200x and a random rotation."""
    g = _gen(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    lam = torch.tensor([0.01, 0.3, 2.0], dtype=torch.float64)
    cov = q @ torch.diag(lam) @ q.T
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    return mean, (cov + cov.T) / 2, q, lam


def _gaussian_flow(x, s0, s1, mean, q, lam):
    """x(s1) = m + U diag(sqrt((lam + s1^2) / (lam + s0^2))) U^T (x(s0) - m)."""
    r = torch.sqrt((lam + s1[:, None] ** 2) / (lam + s0[:, None] ** 2))
    return mean + ((x - mean) @ q * r) @ q.T


# --------------------------------------------------------------------------------------------
# structure


def test_structure():
    mean, cov, _, lam = _rotated_gaussian()
    g = gaussian(mean, cov)
    assert g.dim == 3 and g.num_components == 1
    torch.testing.assert_close(g.covariances[0], cov, rtol=0, atol=1e-14)
    torch.testing.assert_close(g.variances[0], lam, rtol=1e-12, atol=0)
    torch.testing.assert_close(g.mean, mean)
    iso = gaussian(mean, 0.25)
    torch.testing.assert_close(iso.covariances[0], 0.25 * torch.eye(3, dtype=torch.float64))
    gm = GaussianMixture(torch.tensor([1.0, 3.0]), torch.zeros(2, 2), torch.ones(2, 2))
    torch.testing.assert_close(gm.weights, torch.tensor([0.25, 0.75], dtype=torch.float64))
    r = ring2d(modes=4, radius=2.0, std=0.1)
    square = torch.tensor([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0], [0.0, -2.0]], dtype=torch.float64)
    torch.testing.assert_close(r.means, square, rtol=0, atol=1e-15)
    assert r.labels.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(
        r.covariances, 0.01 * torch.eye(2, dtype=torch.float64).expand(4, 2, 2)
    )
    s = stiff(dim=8, components=3, std_min=0.03, std_max=1.0)
    assert s.basis is None and s.variances.shape == (3, 8)
    assert float(s.variances.min()) == pytest.approx(0.03**2) and float(s.variances.max()) == 1.0
    rm = _mixture("random3d")
    ev = torch.linalg.eigvalsh(rm.covariances)
    assert float(ev.min()) >= 0.01 - 1e-12 and float(ev.max()) <= 1 + 1e-12


# --------------------------------------------------------------------------------------------
# denoiser, score and eps against autograd of the density


SIGMAS = [0.0, 1e-3, 0.05, 0.7, 3.0, 40.0]


@pytest.mark.parametrize("name", list(MIXTURES))
@pytest.mark.parametrize("sigma", SIGMAS)
def test_denoiser_is_tweedie(name, sigma):
    """D(x) = x + sigma^2 grad log p_sigma(x), the gradient by autograd through log_prob."""
    gm = _mixture(name)
    x = _noised(gm, 64, sigma, seed=3).requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.log_prob(x, sigma).sum(), x)
    x = x.detach()
    scale = 1 + x.abs().amax(1, keepdim=True)
    torch.testing.assert_close(gm.score(x, sigma), grad, rtol=1e-10, atol=1e-10)
    d = gm.denoise(x, sigma)
    torch.testing.assert_close(d / scale, (x + sigma**2 * grad) / scale, rtol=0, atol=1e-10)
    assert torch.equal(gm(x, sigma), d)
    if sigma == 0:
        torch.testing.assert_close(d, x, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", list(MIXTURES))
def test_per_sample_sigma(name):
    gm = _mixture(name)
    sigma = torch.tensor(SIGMAS * 4, dtype=torch.float64)
    x = _noised(gm, len(sigma), sigma, seed=4).requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.log_prob(x, sigma).sum(), x)
    x = x.detach()
    d = gm.denoise(x, sigma)
    scale = 1 + x.abs().amax(1, keepdim=True)
    torch.testing.assert_close(
        d / scale, (x + sigma[:, None] ** 2 * grad) / scale, rtol=0, atol=1e-10
    )
    # one sample at a time gives the same
    for i in (0, 3, 5, 10):
        torch.testing.assert_close(d[i : i + 1], gm.denoise(x[i : i + 1], float(sigma[i])))
        torch.testing.assert_close(
            gm.log_prob(x, sigma)[i : i + 1], gm.log_prob(x[i : i + 1], sigma[i])
        )
    # a [1] sigma broadcasts over the batch
    torch.testing.assert_close(gm.denoise(x, sigma[3:4]), gm.denoise(x, float(sigma[3])))


@pytest.mark.parametrize("name", list(MIXTURES))
def test_eps(name):
    gm = _mixture(name)
    sigma = torch.tensor([0.0, 0.01, 0.5, 2.0, 30.0, 0.0], dtype=torch.float64)
    x = _noised(gm, 6, sigma, seed=5)
    eps = gm.eps(x, sigma)
    d = gm.denoise(x, sigma)
    pos = sigma > 0
    torch.testing.assert_close(
        eps[pos], (x[pos] - d[pos]) / sigma[pos, None], rtol=1e-8, atol=1e-10
    )
    assert torch.equal(eps[~pos], torch.zeros_like(eps[~pos]))
    torch.testing.assert_close(gm.eps(x, 0.0), torch.zeros_like(x), rtol=0, atol=0)
    torch.testing.assert_close(gm.eps(x, 2.0), (x - gm.denoise(x, 2.0)) / 2.0)
    torch.testing.assert_close(eps, -sigma[:, None] * gm.score(x, sigma))


def test_infinite_sigma():
    """x holds the unit noise at sigma = inf: D is the prior mean, eps is x itself."""
    gm = _mixture("random3d")
    x = torch.randn(5, 3, generator=_gen(6), dtype=torch.float64)
    d = gm.denoise(x, math.inf)
    torch.testing.assert_close(d, gm.mean.expand(5, 3), rtol=0, atol=1e-14)
    assert torch.equal(gm.eps(x, math.inf), x)
    sigma = torch.tensor([math.inf, 1.0, math.inf, 0.0, 2.0], dtype=torch.float64)
    d = gm.denoise(x, sigma)
    assert bool(torch.isfinite(d).all())
    torch.testing.assert_close(d[1], gm.denoise(x[1:2], 1.0)[0])
    eps = gm.eps(x, sigma)
    assert torch.equal(eps[[0, 2]], x[[0, 2]])


def test_dtype_follows_x():
    gm = _mixture("ring2d")
    x = _noised(gm, 8, 0.3, seed=7)
    for fn in (gm.denoise, gm.score, gm.eps, gm.log_prob):
        out = fn(x.float(), 0.3)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), fn(x.float().double(), 0.3), rtol=1e-6, atol=1e-6)


def test_single_gaussian_denoiser_closed_form():
    mean, cov, _, _ = _rotated_gaussian()
    g = gaussian(mean, cov)
    x = torch.randn(16, 3, generator=_gen(8), dtype=torch.float64) * 3
    for s in (0.0, 0.1, 1.0, 10.0):
        shrink = cov @ torch.linalg.inv(cov + s**2 * torch.eye(3, dtype=torch.float64))
        torch.testing.assert_close(g.denoise(x, s), mean + (x - mean) @ shrink.T)


# --------------------------------------------------------------------------------------------
# the density


def test_log_prob_integrates_to_one_2d():
    gm = _mixture("ring2d")
    h = 0.02  # the rule is spectrally accurate for these smooth, well-resolved (std 0.3) modes
    u = torch.arange(-3.5, 3.5 + h / 2, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(u, u, indexing="ij")
    p = gm.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1), 0.3).exp()
    total = float(p.sum() * h * h)
    assert total == pytest.approx(1.0, abs=1e-6)


def test_log_prob_integrates_to_one_1d():
    gm = GaussianMixture(
        torch.tensor([0.2, 0.5, 0.3]),
        torch.tensor([[-2.0], [0.5], [3.0]]),
        torch.tensor([[0.04], [1.0], [0.25]]),
    )
    h = 1e-3
    u = torch.arange(-25.0, 25.0, h, dtype=torch.float64)[:, None]
    for sigma in (0.0, 0.3, 2.0):
        p = gm.log_prob(u, sigma).exp()
        assert float(p.sum() * h) == pytest.approx(1.0, abs=1e-6)
        # the mean and variance by quadrature
        mean = float((u[:, 0] * p).sum() * h)
        assert mean == pytest.approx(float(gm.mean[0]), abs=1e-6)
        var = float(((u[:, 0] - mean) ** 2 * p).sum() * h)
        assert var == pytest.approx(float(_mixture_cov(gm)[0, 0]) + sigma**2, abs=1e-6)


@pytest.mark.parametrize("sigma", [0.0, 0.2, 1.5])
def test_log_prob_matches_scipy(sigma):
    stats = pytest.importorskip("scipy.stats")
    mean, cov, _, _ = _rotated_gaussian()
    g = gaussian(mean, cov)
    x = _noised(g, 32, sigma, seed=9)
    ref = stats.multivariate_normal(
        mean.numpy(), (cov + sigma**2 * torch.eye(3, dtype=torch.float64)).numpy()
    )
    expected = torch.from_numpy(ref.logpdf(x.numpy()))
    torch.testing.assert_close(g.log_prob(x, sigma), expected, rtol=1e-10, atol=1e-10)
    # a mixture: log sum_k w_k N(x; m_k, C_k + sigma^2 I)
    gm = _mixture("random3d")
    x = _noised(gm, 32, sigma, seed=10)
    eye = torch.eye(3, dtype=torch.float64)
    comps = [
        math.log(float(w)) + stats.multivariate_normal(m, c + sigma**2 * eye).logpdf(x.numpy())
        for w, m, c in zip(gm.weights, gm.means.numpy(), gm.covariances)
    ]
    expected = torch.logsumexp(torch.from_numpy(np.stack(comps)), 0)
    torch.testing.assert_close(gm.log_prob(x, sigma), expected, rtol=1e-10, atol=1e-10)


def test_log_prob_far_from_all_modes_is_finite():
    gm = _mixture("ring2d")
    x = torch.tensor([[50.0, -50.0], [0.0, 0.0]], dtype=torch.float64)
    lp = gm.log_prob(x, 0.0)
    assert bool(torch.isfinite(lp).all())
    d = gm.denoise(x, 0.01)
    assert bool(torch.isfinite(d).all())


# --------------------------------------------------------------------------------------------
# sampling


@pytest.mark.parametrize("name", ["random3d", "stiff8"])
def test_sample_moments(name):
    gm = _mixture(name)
    n = 200_000
    x, k = gm.sample(n, generator=_gen(11), return_components=True)
    assert x.shape == (n, gm.dim) and x.dtype == torch.float64
    # component frequencies: binomial standard errors
    freq = torch.bincount(k, minlength=gm.num_components).double() / n
    se = (gm.weights * (1 - gm.weights) / n).sqrt()
    assert bool(((freq - gm.weights).abs() < 5 * se).all()), (freq, gm.weights)
    # mean: 5 standard errors per coordinate
    mu = x.mean(0)
    cov = _mixture_cov(gm)
    assert bool(((mu - gm.mean).abs() < 5 * (cov.diagonal() / n).sqrt()).all())
    # covariance: 5 standard errors of each entry, estimated from the samples
    c = x - gm.mean
    prods = c[:, :, None] * c[:, None, :]
    emp = prods.mean(0)
    se = prods.std(0) / math.sqrt(n)
    assert bool(((emp - cov).abs() < 5 * se + 1e-12).all())
    # per component: the right mean
    for j in range(gm.num_components):
        xj = x[k == j]
        sej = (gm.covariances[j].diagonal() / len(xj)).sqrt()
        assert bool(((xj.mean(0) - gm.means[j]).abs() < 5 * sej).all())


def test_sample_reproducible():
    gm = _mixture("random3d")
    a = gm.sample(1000, generator=_gen(12))
    b = gm.sample(1000, generator=_gen(12))
    c = gm.sample(1000, generator=_gen(13))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    a2, k = gm.sample(1000, generator=_gen(12), return_components=True)
    assert torch.equal(a2, a) and k.shape == (1000,)


# --------------------------------------------------------------------------------------------
# the probability-flow ODE


def test_ode_matches_gaussian_closed_form():
    """Per-sample endpoints: noise -> data, data -> noise, noise -> noise in both directions, over
    sigma from 0 to ~100, against the closed-form flow of a single Gaussian."""
    mean, cov, q, lam = _rotated_gaussian()
    g = gaussian(mean, cov)
    gen = _gen(14)
    n = 48
    s0 = torch.exp(torch.randn(n, generator=gen, dtype=torch.float64) * 1.5)
    s1 = torch.exp(torch.randn(n, generator=gen, dtype=torch.float64) * 1.5)
    s1[:8] = 0.0  # to the data
    s0[8:16] = 0.0  # from the data
    s0[16], s1[16], s0[17], s1[17] = 100.0, 0.0, 0.0, 100.0
    s1[18:20] = s0[18:20]  # nothing to do
    x = _noised(g, n, s0, seed=15)
    sol = g.ode(x, s0, s1)
    expected = _gaussian_flow(x, s0, s1, mean, q, lam)
    rel = (sol.x - expected).norm(dim=1) / expected.norm(dim=1)
    assert float(rel.max()) <= 1e-8
    assert torch.equal(sol.x[18:20], x[18:20])
    assert sol.x.dtype == torch.float64 and sol.steps > 0 and sol.evaluations > 0


@pytest.mark.parametrize("name", ["random3d", "stiff8"])  # ring2d: test_ode_converged_noise_to_data
def test_ode_round_trip(name):
    """data -> noise (per-sample levels) -> data returns the start."""
    gm = _mixture(name)
    x0 = gm.sample(24, generator=_gen(17))
    s = torch.linspace(0.5, 3.0, 24, dtype=torch.float64)
    forward = gm.ode(x0, 0.0, s)
    back = gm.ode(forward.x, s, 0.0)
    torch.testing.assert_close(back.x, x0, rtol=1e-8, atol=1e-8)
    assert not torch.allclose(forward.x, x0, atol=0.1)


def test_ode_converged_noise_to_data():
    """Tightening rtol 100x moves the answer by < 1e-8, for the sharp-moded ring (noise -> data),
    and the flow runs back to the start."""
    gm = _mixture("ring2d")
    x = _noised(gm, 24, 1.5, seed=19)
    loose = gm.ode(x, 1.5, 0.0)
    tight = gm.ode(x, torch.tensor(1.5, dtype=torch.float64), 0.0, rtol=1e-12)  # scalar endpoints
    assert tight.steps > loose.steps
    torch.testing.assert_close(tight.x, loose.x, rtol=1e-8, atol=1e-8)
    # and back up to the noise it started from
    torch.testing.assert_close(gm.ode(loose.x, 0.0, 1.5).x, x, rtol=1e-8, atol=1e-8)
    # the samples land on the modes
    dist = torch.cdist(loose.x, gm.means).amin(1)
    assert float(dist.median()) < 0.15


def test_ode_preserves_quantiles_1d():
    """In 1-D the flow map is monotone and transports p_s0 to p_s1: F_s1(x(s1)) = F_s0(x(s0))."""
    gm = GaussianMixture(
        torch.tensor([0.3, 0.7]), torch.tensor([[-1.5], [1.0]]), torch.tensor([[0.05], [0.3]])
    )

    def cdf(x, s):
        sd = torch.sqrt(gm.variances[:, 0] + s[:, None] ** 2)
        return (gm.weights * torch.special.ndtr((x - gm.means[:, 0]) / sd)).sum(-1)

    x0 = torch.linspace(-2.5, 2.5, 41, dtype=torch.float64)[:, None].repeat(3, 1)
    s_to = torch.tensor([0.5, 2.0, 10.0], dtype=torch.float64).repeat_interleave(41)
    xs = gm.ode(x0, 0.0, s_to).x
    assert bool((xs.reshape(3, 41)[:, 1:] > xs.reshape(3, 41)[:, :-1]).all())
    torch.testing.assert_close(cdf(xs, s_to), cdf(x0, 0 * s_to), rtol=0, atol=1e-9)


def test_ode_transports_distribution():
    """Exact samples of p_0 carried to sigma = 2 are samples of p_2 = p_0 * N(0, 4 I)."""
    gm = random_mixture(dim=2, components=3, seed=5, scale=1.5)
    n = 800
    x0 = gm.sample(n, generator=_gen(20))
    xt = gm.ode(x0, 0.0, 2.0).x
    noised = _noised(gm, n, 2.0, seed=21)
    cov = _mixture_cov(gm) + 4 * torch.eye(2, dtype=torch.float64)
    # moments: standard errors of n samples
    assert bool(((xt.mean(0) - gm.mean).abs() < 5 * (cov.diagonal() / n).sqrt()).all())
    emp_cov = torch.cov(xt.T)
    assert bool(((emp_cov - cov).abs() < 5 * cov.diagonal().max() * math.sqrt(2 / n)).all())

    # sliced Wasserstein-1 against exact noised samples, compared with two exact sample sets
    dirs = torch.randn(64, 2, generator=_gen(22), dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)

    def sw(a, b):
        pa, _ = torch.sort(a @ dirs.T, 0)
        pb, _ = torch.sort(b @ dirs.T, 0)
        return float((pa - pb).abs().mean())

    same = sw(xt, noised)
    reference = sw(_noised(gm, n, 2.0, seed=23), noised)
    assert same < 2.0 * reference
    # the check has power: the data itself, or noise of the wrong level, is far off
    assert sw(x0, noised) > 5 * same
    assert sw(_noised(gm, n, 1.5, seed=24), noised) > 2 * same


def test_ode_too_few_steps_raises():
    gm = _mixture("ring2d")
    x = _noised(gm, 4, 1.0, seed=24)
    with pytest.raises(RuntimeError, match="did not converge"):
        gm.ode(x, 1.0, 0.0, max_steps=3)


# --------------------------------------------------------------------------------------------
# the linear-measurement posterior


def _likelihood(x, A, y, noise):
    r = y - x @ A.T
    return torch.exp(-0.5 * (r**2).sum(-1) / noise**2)


def _trapz_grid_1d(lo, hi, n):
    u = torch.linspace(lo, hi, n, dtype=torch.float64)
    w = torch.full((n,), (hi - lo) / (n - 1), dtype=torch.float64)
    w[[0, -1]] /= 2
    return u, w


def test_posterior_1d_against_quadrature():
    gm = GaussianMixture(
        torch.tensor([0.2, 0.5, 0.3]),
        torch.tensor([[-2.0], [0.5], [3.0]]),
        torch.tensor([[0.04], [1.0], [0.25]]),
    )
    A = torch.tensor([[1.5]], dtype=torch.float64)
    y = torch.tensor([1.2], dtype=torch.float64)
    noise = 0.4
    post = gm.posterior(A, y, noise)
    u, w = _trapz_grid_1d(-10.0, 10.0, 200_001)
    like = _likelihood(u[:, None], A, y, noise)
    comp = torch.stack(
        [gaussian(m, c).log_prob(u[:, None]).exp() for m, c in zip(gm.means, gm.variances)]
    )  # [K, n]
    joint = gm.weights[:, None] * comp * like
    z = (joint * w).sum()
    weights = (joint * w).sum(1) / z
    mean = (joint.sum(0) * u * w).sum() / z
    torch.testing.assert_close(post.weights, weights, rtol=0, atol=1e-6)
    torch.testing.assert_close(post.mean[0], mean, rtol=0, atol=1e-6)
    # the whole posterior density
    dens = joint.sum(0) / z
    probe = slice(80_000, 120_001, 500)
    torch.testing.assert_close(
        post.log_prob(u[probe, None]).exp(), dens[probe], rtol=1e-6, atol=1e-8
    )
    # per-component posterior means and variances
    for k in range(3):
        mk = (joint[k] * u * w).sum() / (joint[k] * w).sum()
        vk = (joint[k] * (u - mk) ** 2 * w).sum() / (joint[k] * w).sum()
        assert float(post.means[k, 0]) == pytest.approx(float(mk), abs=1e-6)
        assert float(post.covariances[k, 0, 0]) == pytest.approx(float(vk), abs=1e-6)


def test_posterior_2d_against_quadrature():
    gm = random_mixture(dim=2, components=3, seed=7, scale=1.0)
    A = torch.tensor([[1.0, 0.5]], dtype=torch.float64)  # one measurement of a 2-D signal
    y = torch.tensor([0.3], dtype=torch.float64)
    noise = 0.3
    post = gm.posterior(A, y, noise)
    u, w = _trapz_grid_1d(-6.0, 6.0, 801)
    xx, yy = torch.meshgrid(u, u, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    ww = (w[:, None] * w[None, :]).flatten()
    like = _likelihood(pts, A, y, noise)
    comp = torch.stack(
        [gaussian(m, c).log_prob(pts).exp() for m, c in zip(gm.means, gm.covariances)]
    )
    joint = gm.weights[:, None] * comp * like * ww
    z = joint.sum()
    torch.testing.assert_close(post.weights, joint.sum(1) / z, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        post.mean, (joint.sum(0)[:, None] * pts).sum(0) / z, rtol=0, atol=1e-6
    )


def test_posterior_gaussian_is_kalman():
    """Single Gaussian: the information-form update (C^-1 + A^T R^-1 A)^-1 agrees."""
    mean, cov, _, _ = _rotated_gaussian(2)
    g = gaussian(mean, cov)
    A = torch.tensor([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0.7, -1.1], dtype=torch.float64)
    for noise in (0.5, 1e-3, torch.tensor([[0.3, 0.1], [0.1, 0.2]], dtype=torch.float64)):
        r = noise**2 * torch.eye(2, dtype=torch.float64) if isinstance(noise, float) else noise
        post = g.posterior(A, y, noise)
        prec = torch.linalg.inv(cov) + A.T @ torch.linalg.inv(r) @ A
        p_cov = torch.linalg.inv(prec)
        p_mean = p_cov @ (torch.linalg.solve(cov, mean) + A.T @ torch.linalg.solve(r, y))
        assert post.num_components == 1
        torch.testing.assert_close(post.means[0], p_mean, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(post.covariances[0], p_cov, rtol=1e-8, atol=1e-11)


def test_posterior_noise_matrix_equals_scalar():
    gm = _mixture("random3d")
    A = torch.randn(2, 3, generator=_gen(25), dtype=torch.float64)
    y = torch.randn(2, generator=_gen(26), dtype=torch.float64)
    a = gm.posterior(A, y, 0.3)
    b = gm.posterior(A, y, 0.09 * torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(a.weights, b.weights)
    torch.testing.assert_close(a.means, b.means)
    torch.testing.assert_close(a.covariances, b.covariances)
    assert torch.equal(a.labels, gm.labels)


def test_posterior_denoiser_is_bayes():
    """The posterior's denoiser at sigma: E[x0 | x, y] by importance weights over prior samples."""
    gm = GaussianMixture(
        torch.tensor([0.4, 0.6]), torch.tensor([[-1.0], [1.5]]), torch.tensor([[0.2], [0.5]])
    )
    A, y, noise, sigma = torch.tensor([[1.0]]).double(), torch.tensor([0.8]).double(), 0.5, 0.7
    post = gm.posterior(A, y, noise)
    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    u, w = _trapz_grid_1d(-10.0, 10.0, 100_001)
    prior = gm.log_prob(u[:, None]).exp()
    like = _likelihood(u[:, None], A, y, noise)
    for i in range(2):
        kern = torch.exp(-0.5 * ((x[i, 0] - u) / sigma) ** 2)
        wt = prior * like * kern * w
        expected = float((wt * u).sum() / wt.sum())
        assert float(post.denoise(x[i : i + 1], sigma)[0, 0]) == pytest.approx(expected, abs=1e-7)


# --------------------------------------------------------------------------------------------
# conditioning on a label


def test_condition_keeps_label_components():
    r = ring2d(modes=8, radius=1.0, std=0.05)
    c = r.condition(3)
    assert c.num_components == 1 and c.labels.tolist() == [3]
    torch.testing.assert_close(c.means[0], r.means[3])
    torch.testing.assert_close(c.covariances[0], r.covariances[3])
    torch.testing.assert_close(c.weights, torch.ones(1, dtype=torch.float64))

    gm = GaussianMixture(
        torch.tensor([1.0, 2.0, 3.0, 4.0]),
        torch.arange(8.0).reshape(4, 2),
        random_mixture(2, 4, seed=3).covariances,
        labels=torch.tensor([0, 1, 0, 1]),
    )
    c0 = gm.condition(0)
    torch.testing.assert_close(c0.weights, torch.tensor([0.25, 0.75], dtype=torch.float64))
    torch.testing.assert_close(c0.means, gm.means[[0, 2]])
    torch.testing.assert_close(c0.covariances, gm.covariances[[0, 2]], rtol=0, atol=1e-14)
    assert c0.labels.tolist() == [0, 0]
    # the class-conditional density is the normalized restriction
    x = torch.randn(10, 2, generator=_gen(27), dtype=torch.float64) * 3
    comps = torch.stack(
        [gaussian(m, cv).log_prob(x, 0.5) for m, cv in zip(gm.means, gm.covariances)], 1
    )
    w = torch.tensor([0.25, 0.0, 0.75, 0.0], dtype=torch.float64)
    expected = torch.logsumexp(comps + w.log(), 1)
    torch.testing.assert_close(c0.log_prob(x, 0.5), expected, rtol=1e-12, atol=1e-12)
    # diagonal mixtures keep their diagonal form
    s = stiff(dim=8, components=3)
    cs = s.condition(2)
    assert cs.basis is None
    torch.testing.assert_close(cs.variances[0], s.variances[2])


# --------------------------------------------------------------------------------------------
# bad input


def test_bad_x_shape_raises():
    gm = _mixture("random3d")
    for bad in (torch.zeros(4, 2), torch.zeros(3), torch.zeros(2, 3, 1)):
        for fn in (gm.denoise, gm.score, gm.log_prob, gm.eps):
            with pytest.raises(ValueError, match="x must be"):
                fn(bad.double(), 1.0)
        with pytest.raises(ValueError, match="x must be"):
            gm.ode(bad.double(), 1.0, 0.0)


def test_bad_sigma_raises():
    gm = _mixture("random3d")
    x = torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="sigma"):
        gm.denoise(x, -0.1)
    with pytest.raises(ValueError, match="sigma"):
        gm.log_prob(x, torch.tensor([1.0, 1.0, math.nan, 1.0]))
    with pytest.raises(ValueError, match="sigma"):
        gm.denoise(x, torch.ones(3))  # neither scalar nor one per sample
    with pytest.raises(ValueError, match="sigma"):
        gm.denoise(x, torch.ones(4, 1))
    with pytest.raises(ValueError, match="sigma_from"):
        gm.ode(x, -1.0, 0.0)
    with pytest.raises(ValueError, match="sigma_to"):
        gm.ode(x, 1.0, torch.tensor([0.0, -1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="finite"):
        gm.ode(x, math.inf, 0.0)
    with pytest.raises(ValueError, match="finite"):
        gm.ode(x, 0.0, torch.tensor([1.0, math.inf, 1.0, 1.0]))


def test_bad_construction_raises():
    means = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="definite"):  # a negative eigenvalue
        GaussianMixture(torch.ones(2), means, torch.tensor([[[1.0, 2.0], [2.0, 1.0]]] * 2))
    with pytest.raises(ValueError, match="definite"):
        GaussianMixture(torch.ones(2), means, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="definite"):
        GaussianMixture(torch.ones(2), means, -1.0)
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixture(torch.ones(2), means, torch.tensor([[[1.0, 0.5], [0.0, 1.0]]] * 2))
    with pytest.raises(ValueError, match="covs"):
        GaussianMixture(torch.ones(2), means, torch.ones(3, 2))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.ones(3), means, 1.0)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.tensor([1.0, -0.5]), means, 1.0)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.zeros(2), means, 1.0)
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(torch.ones(2), torch.zeros(2), 1.0)
    with pytest.raises(ValueError, match="labels"):
        GaussianMixture(torch.ones(2), means, 1.0, labels=torch.tensor([0, 1, 2]))


def test_bad_label_raises():
    with pytest.raises(ValueError, match="label 9") as info:
        ring2d(modes=4).condition(9)
    assert "[0, 1, 2, 3]" in str(info.value)
    with pytest.raises(ValueError, match="no component labels"):
        gaussian(torch.zeros(2), 1.0).condition(0)


def test_bad_posterior_shapes_raise():
    gm = _mixture("random3d")
    with pytest.raises(ValueError, match="A must be"):
        gm.posterior(torch.ones(2, 2), torch.ones(2), 0.1)
    with pytest.raises(ValueError, match="A must be"):
        gm.posterior(torch.ones(2, 3), torch.ones(3), 0.1)
    with pytest.raises(ValueError, match="A must be"):
        gm.posterior(torch.ones(3), torch.ones(1), 0.1)
