"""Fréchet distance, precision/recall, density/coverage and MMD against closed forms and known cases."""

import math

import pytest
import torch

from difflab import metrics
from difflab.metrics import (
    density_coverage,
    frechet_distance,
    frechet_from_stats,
    gaussian_stats,
    knn_radii,
    median_bandwidth,
    mmd2,
    precision_recall,
)
from difflab.testing import metrics as testing_metrics


def _spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


# ---------------------------------------------------------------------------------- Fréchet


def test_frechet_1d_formula():
    """In 1-D: (mu1 - mu2)^2 + (s1 - s2)^2."""
    d2 = frechet_from_stats(
        *(torch.tensor(v, dtype=torch.float64) for v in ([0.3], [[4.0]], [-1.2], [[0.25]]))
    )
    assert d2 == pytest.approx(1.5**2 + (2.0 - 0.5) ** 2, rel=1e-12)


def test_frechet_commuting_covariances():
    """Diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.rand(6, generator=g, dtype=torch.float64) + 0.1 for _ in range(2))
    mu1, mu2 = (torch.randn(6, generator=g, dtype=torch.float64) for _ in range(2))
    expected = (mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum()
    got = frechet_from_stats(mu1, torch.diag(a), mu2, torch.diag(b))
    assert got == pytest.approx(float(expected), rel=1e-10)


def test_frechet_2d_non_commuting_closed_form():
    """2 x 2: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)), M = S1^1/2 S2 S1^1/2, so the cross term is
    sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)) even when S1 S2 != S2 S1."""
    s1 = torch.tensor([[2.0, 0.9], [0.9, 1.0]], dtype=torch.float64)
    s2 = torch.tensor([[0.5, -0.3], [-0.3, 3.0]], dtype=torch.float64)
    assert not torch.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = torch.tensor([1.0, 2.0]), torch.tensor([0.0, -1.0])
    cross = math.sqrt(float(torch.trace(s1 @ s2)) + 2 * math.sqrt(float(s1.det() * s2.det())))
    expected = 1 + 9 + float(torch.trace(s1) + torch.trace(s2)) - 2 * cross
    assert frechet_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)


def test_frechet_symmetric_and_matches_scipy_sqrtm():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    s1, s2 = _spd(20, 1), _spd(20, 2)
    mu1, mu2 = torch.zeros(20), torch.ones(20) * 0.1
    ab, ba = frechet_from_stats(mu1, s1, mu2, s2), frechet_from_stats(mu2, s2, mu1, s1)
    assert ab == pytest.approx(ba, rel=1e-10)
    root = scipy_linalg.sqrtm((s1 @ s2).numpy()).real
    expected = 0.2 + float(torch.trace(s1) + torch.trace(s2)) - 2 * root.trace()
    assert ab == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_feature_sets():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(300, 8, generator=g), torch.randn(200, 8, generator=g) * 2 + 1
    assert frechet_distance(a, b) == pytest.approx(
        frechet_from_stats(*gaussian_stats(a), *gaussian_stats(b)), rel=1e-12
    )
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-10)
    few = torch.randn(10, 32, generator=g)  # rank-deficient covariance: still 0 against itself
    assert abs(frechet_distance(few, few)) < 1e-6
    mu, cov = gaussian_stats(a)
    assert torch.allclose(cov, torch.cov(a.double().T), atol=1e-12)
    assert torch.allclose(mu, a.double().mean(0))


def test_frechet_bad_shapes():
    with pytest.raises(ValueError, match=r"\[N, D\] and \[M, D\]"):
        frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_stats(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="one D"):
        frechet_from_stats(torch.zeros(3), torch.eye(3), torch.zeros(2), torch.eye(2))


# ---------------------------------------------------------------------------------- k-NN metrics


def test_knn_radii_brute_force_and_blocks():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(57, 5, generator=g)
    full = torch.cdist(x.double(), x.double())
    for k in (1, 3):
        expected = full.sort(1).values[:, k]
        assert torch.allclose(knn_radii(x, k), expected, atol=1e-12)
        assert torch.allclose(knn_radii(x, k, block=40), expected, atol=1e-12)


def test_identical_sets():
    x = torch.randn(400, 6, generator=torch.Generator().manual_seed(5))
    pr = precision_recall(x, x.clone())
    dc = density_coverage(x, x.clone())
    assert pr == {"precision": 1.0, "recall": 1.0}
    assert dc["coverage"] == 1.0
    assert 0.8 < dc["density"] < 1.3  # about 1 for matching distributions (Naeem et al. 2020)


def test_disjoint_sets():
    g = torch.Generator().manual_seed(6)
    real, fake = torch.randn(200, 4, generator=g), torch.randn(150, 4, generator=g) + 100
    assert precision_recall(real, fake) == {"precision": 0.0, "recall": 0.0}
    assert density_coverage(real, fake) == {"density": 0.0, "coverage": 0.0}


def test_subset_of_two_clusters():
    """Fake = one of two far clusters of the real set: precision 1, recall and coverage 1/2."""
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(100, 3, generator=g), torch.randn(100, 3, generator=g) + 50
    real = torch.cat([a, b])
    pr = precision_recall(real, a, block=333)
    dc = density_coverage(real, a)
    assert pr == {"precision": 1.0, "recall": 0.5}
    assert dc["coverage"] == 0.5
    assert dc["density"] > 0.8


def test_precision_recall_bad_input():
    with pytest.raises(ValueError, match="below both set sizes"):
        precision_recall(torch.zeros(3, 2), torch.zeros(10, 2), k=3)
    with pytest.raises(ValueError, match=r"real \[N, D\] and fake \[M, D\]"):
        density_coverage(torch.zeros(10, 2), torch.zeros(10, 3))


# ---------------------------------------------------------------------------------- MMD


def test_mmd_hand_computed():
    """x = {0, 1}, y = {0, 2}, h = 1, k = exp(-d^2 / 2):
    k_xx = e^-1/2, k_yy = e^-2, k_xy = (1 + e^-2 + 2 e^-1/2) / 4."""
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [2.0]])
    e = math.exp
    expected = e(-0.5) + e(-2) - 2 * (1 + e(-2) + 2 * e(-0.5)) / 4
    assert mmd2(x, y, bandwidth=1.0) == pytest.approx(expected, rel=1e-12)
    assert mmd2(y, x, bandwidth=1.0) == pytest.approx(expected, rel=1e-12)


def test_median_bandwidth():
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[3.0], [7.0]])
    # pairwise distances 1, 3, 7, 2, 6, 4: lower median 3
    assert median_bandwidth(x, y) == 3.0


def test_mmd_zero_in_expectation_for_one_distribution():
    g = torch.Generator().manual_seed(8)
    values = torch.tensor(
        [mmd2(torch.randn(30, 2, generator=g), torch.randn(40, 2, generator=g)) for _ in range(200)]
    )
    se = values.std() / math.sqrt(len(values))
    assert abs(float(values.mean())) < 3 * float(se)
    assert float(values.min()) < 0  # unbiased: negative values occur


def test_mmd_matches_gaussian_closed_form():
    """x ~ N(0, s^2 I), y ~ N(m, s^2 I), RBF width h: MMD^2 = 2 c (1 - exp(-|m|^2 / (2(h^2 + 2s^2))))
    with c = (h^2 / (h^2 + 2 s^2))^(d/2)."""
    g = torch.Generator().manual_seed(9)
    d, s, h = 2, 1.0, 1.5
    m = torch.tensor([1.0, 0.5])
    x, y = torch.randn(1500, d, generator=g) * s, torch.randn(1500, d, generator=g) * s + m
    c = (h**2 / (h**2 + 2 * s**2)) ** (d / 2)
    expected = 2 * c * (1 - math.exp(-float(m.square().sum()) / (2 * (h**2 + 2 * s**2))))
    got = mmd2(x, y, bandwidth=h)
    assert got > 0
    assert got == pytest.approx(expected, rel=0.1)


def test_mmd_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        mmd2(torch.zeros(1, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        mmd2(torch.zeros(3, 2), torch.ones(3, 2), bandwidth=0.0)
    with pytest.raises(ValueError, match="median pairwise distance is 0"):
        mmd2(torch.zeros(3, 2), torch.zeros(3, 2))


def test_sliced_w2_is_the_testing_one():
    assert metrics.sliced_w2 is testing_metrics.sliced_w2
    assert metrics.wasserstein2_1d is testing_metrics.wasserstein2_1d
