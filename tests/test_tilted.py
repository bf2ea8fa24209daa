"""The exact KL-regularized optimum p* ∝ p exp(r / beta) (difflab.testing.tilted), checked against
importance-weighted samples of p, quadrature on a grid, its limits and Monte-Carlo rewards; the
sliced W2 it is scored with, against closed-form Gaussian distances. float64."""

from __future__ import annotations

import math

import pytest
import torch

from difflab.testing import (
    GaussianMixture,
    LinearReward,
    QuadraticReward,
    mean_reward,
    preference_optimum,
    sliced_w2,
    tilted,
)

N = 200_000


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mixture_2d() -> GaussianMixture:
    covs = torch.tensor(
        [[[0.5, 0.2], [0.2, 0.3]], [[0.3, -0.1], [-0.1, 0.6]], [[0.2, 0.05], [0.05, 0.4]]],
        dtype=torch.float64,
    )
    means = torch.tensor([[-1.0, 0.0], [1.5, 1.0], [0.5, -1.5]], dtype=torch.float64)
    return GaussianMixture(torch.tensor([0.5, 0.3, 0.2]), means, covs, labels=torch.arange(3))


def _mixture_1d() -> GaussianMixture:
    covs = torch.tensor([[[0.5]], [[0.3]]], dtype=torch.float64)
    return GaussianMixture(torch.tensor([0.6, 0.4]), torch.tensor([[-1.0], [2.0]]), covs)


CASES = {
    "linear2d": (_mixture_2d, LinearReward(torch.tensor([0.8, -0.5]), c=0.3), 1.0),
    "quadratic2d": (
        _mixture_2d,
        QuadraticReward(torch.tensor([[1.0, 0.3], [0.3, 0.5]]), torch.tensor([0.5, -0.5]), c=1.0),
        0.5,
    ),
    "linear1d": (_mixture_1d, LinearReward(torch.tensor([0.7])), 1.0),
    "quadratic1d": (_mixture_1d, QuadraticReward(torch.tensor([[0.8]]), torch.tensor([1.0])), 0.5),
}
# Q < 0 is allowed while every S_k^-1 + Q / beta stays positive definite (1/0.3, 1/0.5 > 0.5)
GRID_CASES = {
    **{k: v for k, v in CASES.items() if k.endswith("1d")},
    "indefinite1d": (
        _mixture_1d,
        QuadraticReward(torch.tensor([[-0.5]]), torch.tensor([0.5])),
        1.0,
    ),
}


def _mixture_cov(gm: GaussianMixture) -> torch.Tensor:
    """Cov[x] = sum_k w_k (C_k + m_k m_k^T) - mu mu^T."""
    second = torch.einsum("k,kij->ij", gm.weights, gm.covariances) + torch.einsum(
        "k,ki,kj->ij", gm.weights, gm.means, gm.means
    )
    return second - torch.outer(gm.mean, gm.mean)


def _weighted(w: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-normalized importance estimate sum_i w_i f_i (w sums to 1) and its standard error
    sqrt(sum_i w_i^2 (f_i - estimate)^2) (the delta method)."""
    est = w @ f
    return est, (w.square() @ (f - est).square()).sqrt()


@pytest.mark.parametrize("case", CASES)
def test_tilt_matches_importance_weighted_samples(case):
    make, reward, beta = CASES[case]
    p = make()
    q = tilted(p, reward, beta)
    x, k = p.sample(N, generator=_gen(0), return_components=True)
    w = torch.softmax(reward(x) / beta, 0)
    assert 1 / w.square().sum() > N / 10  # a mild tilt: the estimates below are sharp
    mean, se = _weighted(w, x)
    assert ((mean - q.mean).abs() <= 5 * se).all(), (mean, q.mean, se)
    centred = x - q.mean
    second, se = _weighted(w, (centred[:, :, None] * centred[:, None, :]).flatten(1))
    assert ((second - _mixture_cov(q).flatten()).abs() <= 5 * se).all(), (second, _mixture_cov(q))
    resp, se = _weighted(w, torch.nn.functional.one_hot(k, p.num_components).double())
    assert ((resp - q.weights).abs() <= 5 * se).all(), (resp, q.weights, se)
    assert not torch.allclose(q.weights, p.weights, atol=0.02)  # the tilt did move mass
    assert torch.equal(q.labels, p.labels) if p.labels is not None else q.labels is None


@pytest.mark.parametrize("case", GRID_CASES)
def test_tilted_density_on_a_grid(case):
    make, reward, beta = GRID_CASES[case]
    p = make()
    q = tilted(p, reward, beta)
    x = torch.linspace(-20, 20, 80_001, dtype=torch.float64)[:, None]
    unnormalized = p.log_prob(x) + reward(x) / beta
    log_z = math.log(torch.trapezoid(unnormalized.exp(), x[:, 0]))
    torch.testing.assert_close(q.log_prob(x), unnormalized - log_z, atol=1e-8, rtol=0)
    assert float(torch.trapezoid(q.log_prob(x).exp(), x[:, 0])) == pytest.approx(1, abs=1e-10)


@pytest.mark.parametrize("case", CASES)
def test_infinite_beta_is_the_base_model(case):
    make, reward, _ = CASES[case]
    p = make()
    for beta, tol in [(math.inf, 1e-12), (1e9, 1e-8)]:
        q = tilted(p, reward, beta)
        torch.testing.assert_close(q.weights, p.weights, atol=tol, rtol=0)
        torch.testing.assert_close(q.means, p.means, atol=tol, rtol=0)
        torch.testing.assert_close(q.covariances, p.covariances, atol=tol, rtol=0)


def test_small_beta_concentrates_on_the_best_component():
    # equal covariances: the linear tilt's weights go as pi_k exp(w . mu_k / beta)
    p = _mixture_2d()
    shared = GaussianMixture(p.weights, p.means, p.covariances[0].expand(3, 2, 2))
    reward = LinearReward(torch.tensor([0.0, 1.0]))  # component 1 (mean y = 1) is the best
    q = tilted(shared, reward, 0.02)
    torch.testing.assert_close(q.weights, torch.softmax(p.weights.log() + p.means[:, 1] / 0.02, 0))
    assert float(q.weights[1]) > 1 - 1e-15
    # the means move along S w / beta, the covariances stay
    torch.testing.assert_close(q.means, p.means + p.covariances[0] @ reward.w / 0.02)
    torch.testing.assert_close(q.covariances, shared.covariances)
    # a quadratic reward peaked at a: every component collapses onto a with covariance beta Q^-1
    quad = CASES["quadratic2d"][1]
    beta = 1e-6  # the means sit at a + S* S^-1 (mu - a), O(beta) away
    q = tilted(p, quad, beta)
    torch.testing.assert_close(q.means, quad.a.expand(3, 2), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        q.covariances, (beta * torch.linalg.inv(quad.Q)).expand(3, 2, 2), atol=0, rtol=1e-3
    )
    assert mean_reward(q, quad) == pytest.approx(quad.c - beta * 2 / 2, abs=1e-8)


@pytest.mark.parametrize("case", CASES)
def test_mean_reward_is_the_monte_carlo_mean(case):
    make, reward, beta = CASES[case]
    for model in (make(), tilted(make(), reward, beta)):
        r = reward(model.sample(N, generator=_gen(1)))
        se = float(r.std()) / math.sqrt(N)
        assert abs(mean_reward(model, reward) - float(r.mean())) < 5 * se
    assert mean_reward(tilted(make(), reward, beta), reward) > mean_reward(make(), reward) + 0.1


def test_preference_optimum_has_the_reward_as_its_implicit_reward():
    """DPO's implicit reward beta log(q / p) is r plus a constant: Bradley-Terry preferences of q
    against p are those of r."""
    p = _mixture_2d()
    _, reward, beta = CASES["quadratic2d"]
    q = preference_optimum(p, reward, beta)
    x = p.sample(1000, generator=_gen(2))
    gap = beta * (q.log_prob(x) - p.log_prob(x)) - reward(x)
    assert float(gap.std()) < 1e-9


def test_reward_call_is_differentiable_and_keeps_the_dtype():
    reward = CASES["quadratic2d"][1]
    x = torch.tensor([[0.5, -0.5], [1.5, -0.5]], dtype=torch.float32, requires_grad=True)
    r = reward(x)
    assert r.dtype == torch.float32
    torch.testing.assert_close(r, torch.tensor([1.0, 0.5]))  # -1/2 * Q[0, 0] * 1^2 + 1
    r.sum().backward()
    torch.testing.assert_close(x.grad, -(x.detach() - reward.a.float()) @ reward.Q.float())


def test_sliced_w2_against_closed_forms():
    g = _gen(3)
    x = torch.randn(5000, 3, generator=g, dtype=torch.float64)
    assert sliced_w2(x, x[torch.randperm(5000, generator=g)], generator=_gen(0)) == 0
    # 1-D Gaussians, N != M (quantile matching): W2^2 = (m1 - m2)^2 + (s1 - s2)^2; in 1-D every
    # direction is +-1, so the sliced distance is W2 itself
    a = torch.randn(100_000, 1, generator=g, dtype=torch.float64)
    b = 1.0 + 2.0 * torch.randn(75_000, 1, generator=g, dtype=torch.float64)
    assert sliced_w2(a, b, projections=4, generator=_gen(0)) == pytest.approx(
        math.sqrt(2), abs=0.01
    )
    # isotropic 2-D Gaussians: the mean over unit u of (u . dm)^2 is |dm|^2 / 2 (the projections'
    # Monte-Carlo error is 0.014 here)
    shift = torch.tensor([1.0, 0.5], dtype=torch.float64)
    a = torch.randn(10_000, 2, generator=g, dtype=torch.float64)
    b = shift + 1.5 * torch.randn(8_000, 2, generator=g, dtype=torch.float64)
    exact = 1.25 / 2 + 0.5**2
    assert sliced_w2(a, b, projections=1024, generator=_gen(0)) ** 2 == pytest.approx(
        exact, abs=0.06
    )
    assert sliced_w2(x, x + 0.3, generator=_gen(0)) > 0.1


def test_bad_input():
    p = _mixture_2d()
    too_steep = QuadraticReward(-5 * torch.eye(2), torch.zeros(2))
    with pytest.raises(ValueError, match="not positive definite for component"):
        tilted(p, too_steep, 1.0)
    tilted(p, too_steep, 20.0)  # the same Q is fine once Q / beta is small enough
    with pytest.raises(ValueError, match="R\\^3"):
        tilted(p, LinearReward(torch.ones(3)), 1.0)
    with pytest.raises(ValueError, match="R\\^3"):
        mean_reward(p, LinearReward(torch.ones(3)))
    with pytest.raises(ValueError, match="vector"):
        LinearReward(torch.ones(2, 2))
    with pytest.raises(ValueError, match="symmetric"):
        QuadraticReward(torch.tensor([[1.0, 0.5], [0.0, 1.0]]), torch.zeros(2))
    with pytest.raises(ValueError, match="\\[D, D\\]"):
        QuadraticReward(torch.eye(3), torch.zeros(2))
    with pytest.raises(ValueError, match="beta"):
        tilted(p, LinearReward(torch.ones(2)), 0.0)
    with pytest.raises(ValueError, match="LinearReward or QuadraticReward"):
        tilted(p, lambda x: x.sum(-1), 1.0)
    with pytest.raises(ValueError, match="x \\[B, 2\\]"):
        LinearReward(torch.ones(2))(torch.ones(4, 3))
