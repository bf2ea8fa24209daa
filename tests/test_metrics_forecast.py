"""Probabilistic forecast scores against closed forms, brute force and hand computations."""

import math

import pytest
import torch

from difflab.metrics.forecast import (
    QUANTILES,
    coverage,
    crps,
    crps_sum,
    forecast_metrics,
    gaussian_crps,
    median_errors,
    quantile_crps,
)


def brute_crps(samples, truth, fair=False):
    """Per entry mean_i |x_i - y| - sum_{i,j} |x_i - x_j| / (2 S^2) (or 2 S (S - 1) when fair)."""
    s = samples.shape[0]
    pairs = (samples[:, None] - samples[None, :]).abs().sum((0, 1))
    return (samples - truth).abs().mean(0) - pairs / (2 * s * (s - 1) if fair else 2 * s * s)


def csdi_quantile_crps(target, forecast, eval_points):
    """CSDI's calc_quantile_CRPS (Tashiro et al. 2021, utils.py), forecast [S, ...] here, its
    indicator in float64 (CSDI's ``* 1.0`` makes it float32)."""
    denom = (target * eval_points).abs().sum()
    total = 0.0
    for q in QUANTILES:
        q_pred = torch.quantile(forecast, q, dim=0)
        total += (
            2
            * ((q_pred - target) * eval_points * ((target <= q_pred).double() - q)).abs().sum()
            / denom
        )
    return float(total) / len(QUANTILES)


def test_crps_equals_brute_force_exactly():
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(17, 3, 4, generator=g, dtype=torch.float64)
    truth = torch.randn(3, 4, generator=g, dtype=torch.float64)
    for fair in (False, True):
        assert crps(samples, truth, fair=fair) == pytest.approx(
            float(brute_crps(samples, truth, fair).mean()), rel=1e-13
        )


def test_crps_of_one_sample_is_the_absolute_error():
    samples = torch.tensor([[1.0, -2.0, 5.0]])
    truth = torch.tensor([1.5, 0.0, 5.0])
    assert crps(samples, truth) == pytest.approx((0.5 + 2.0 + 0.0) / 3, rel=1e-15)
    with pytest.raises(ValueError, match="at least 2 samples"):
        crps(samples, truth, fair=True)


def test_crps_of_many_gaussian_samples_is_the_closed_form():
    g = torch.Generator().manual_seed(1)
    mean = torch.tensor([0.0, 1.0, -2.0, 3.0], dtype=torch.float64)
    std = torch.tensor([1.0, 0.5, 2.0, 1.5], dtype=torch.float64)
    truth = torch.tensor([0.3, 2.5, -2.0, -1.0], dtype=torch.float64)
    samples = mean + std * torch.randn(40000, 4, generator=g, dtype=torch.float64)
    exact = gaussian_crps(mean, std, truth)
    assert exact.shape == (4,)
    # closed form at y = mean: std (2 phi(0) - 1/sqrt(pi)) = std (sqrt(2) - 1) / sqrt(pi)
    assert float(exact[2]) == pytest.approx(2.0 * (math.sqrt(2) - 1) / math.sqrt(math.pi))
    for k in range(4):
        only = torch.zeros(4, dtype=torch.bool)
        only[k] = True
        # Monte-Carlo sd ~ std / sqrt(S) = 0.01 at most; the non-fair bias std / (sqrt(pi) S) is tiny
        assert crps(samples, truth, only) == pytest.approx(float(exact[k]), abs=0.04)


def test_fair_crps_is_unbiased_and_the_plain_one_is_not():
    g = torch.Generator().manual_seed(2)
    samples = torch.randn(2, 100000, generator=g, dtype=torch.float64)  # S = 2 per entry
    truth = torch.full((100000,), 0.5, dtype=torch.float64)
    exact = float(gaussian_crps(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(0.5)))
    fair, plain = crps(samples, truth, fair=True), crps(samples, truth)
    assert fair == pytest.approx(exact, abs=0.01)
    # with S = 2 the plain spread term is half the fair one: bias E|X - X'| / 4 = 1 / (2 sqrt(pi))
    assert plain - fair == pytest.approx(1 / (2 * math.sqrt(math.pi)), abs=0.01)
    assert plain - fair == pytest.approx(
        float((samples[0] - samples[1]).abs().mean()) / 4, rel=1e-12
    )


def test_coverage_of_gaussian_samples_is_the_level():
    g = torch.Generator().manual_seed(3)
    samples = torch.randn(400, 5000, generator=g, dtype=torch.float64)
    truth = torch.randn(5000, generator=g, dtype=torch.float64)
    for level in (0.5, 0.9):
        assert coverage(samples, truth, level) == pytest.approx(level, abs=0.02)
    assert coverage(samples, torch.full((5000,), 10.0, dtype=torch.float64)) == 0.0


def test_quantile_crps_by_hand():
    # entry a: samples 0..4, y = 2; entry b: 10..50, y = 12; q = 0.3 sits at position 1.2:
    # q_hat = 1.2 and 22; losses 2 |(2 - 1.2)(0 - 0.3)| = 0.48 and 2 |(12 - 22)(1 - 0.3)| = 14
    samples = torch.tensor([[0.0, 10.0], [1.0, 20.0], [2.0, 30.0], [3.0, 40.0], [4.0, 50.0]])
    truth = torch.tensor([2.0, 12.0])
    assert quantile_crps(samples, truth, quantiles=[0.3]) == pytest.approx(14.48 / 14, rel=1e-14)
    # q = 0.5: q_hat = 2 (loss 0) and 30: 2 |(12 - 30)(1 - 0.5)| = 18; mean over q of loss / 14
    assert quantile_crps(samples, truth, quantiles=[0.3, 0.5]) == pytest.approx(
        (14.48 + 18) / 14 / 2, rel=1e-14
    )


def test_quantile_crps_is_csdis():
    g = torch.Generator().manual_seed(4)
    samples = torch.randn(31, 6, 5, generator=g, dtype=torch.float64) * 2 + 1
    truth = torch.randn(6, 5, generator=g, dtype=torch.float64) + 1
    mask = torch.rand(6, 5, generator=g) < 0.6
    assert quantile_crps(samples, truth, mask) == pytest.approx(
        csdi_quantile_crps(truth, samples, mask.double()), rel=1e-12
    )
    # CRPS-sum: CSDI's calc_quantile_CRPS_sum sums the columns and weights each sum by the fraction
    # of scored columns; with every entry scored it is the quantile CRPS of the sums
    assert crps_sum(samples, truth) == pytest.approx(
        quantile_crps(samples.sum(-1), truth.sum(-1)), rel=1e-12
    )
    weight = mask.double().mean(-1)
    assert crps_sum(samples, truth, mask) == pytest.approx(
        csdi_quantile_crps((truth * mask).sum(-1), (samples * mask).sum(-1), weight), rel=1e-12
    )


def test_median_errors_by_hand():
    samples = torch.tensor([[1.0, 0.0], [2.0, 5.0], [4.0, 1.0], [3.0, 9.0]])  # medians 2.5 and 3
    truth = torch.tensor([3.0, 1.0])
    mse, mae = median_errors(samples, truth)
    assert mse == pytest.approx((0.25 + 4.0) / 2) and mae == pytest.approx((0.5 + 2.0) / 2)


def test_unscored_entries_do_not_change_any_score():
    g = torch.Generator().manual_seed(5)
    samples = torch.randn(20, 4, 3, generator=g, dtype=torch.float64)
    truth = torch.randn(4, 3, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 3, generator=g) < 0.5
    mask[0, 0] = True
    other_samples, other_truth = samples.clone(), truth.clone()
    other_samples[:, ~mask] = 1e6
    other_truth[~mask] = -1e6
    first = forecast_metrics(samples, truth, mask)
    second = forecast_metrics(other_samples, other_truth, mask)
    assert first == pytest.approx(second, rel=1e-12)
    # and the scores are those of the scored entries alone
    assert first["crps"] == pytest.approx(crps(samples[:, mask], truth[mask]), rel=1e-12)
    assert first["coverage_90"] == coverage(samples[:, mask], truth[mask], 0.9)
    assert first["crps_quantile"] == pytest.approx(quantile_crps(samples[:, mask], truth[mask]))


def test_forecast_metrics_collects_the_scores():
    g = torch.Generator().manual_seed(6)
    samples = torch.randn(30, 8, 2, generator=g)
    truth = torch.randn(8, 2, generator=g) + 0.5
    scores = forecast_metrics(samples, truth)
    assert set(scores) == {
        "crps", "crps_quantile", "crps_sum", "mse", "mae", "coverage_50", "coverage_90"
    }  # fmt: skip
    assert scores["crps"] == pytest.approx(crps(samples, truth), rel=1e-12)
    assert scores["crps_sum"] == pytest.approx(crps_sum(samples, truth), rel=1e-12)
    assert (scores["mse"], scores["mae"]) == pytest.approx(median_errors(samples, truth))
    assert scores["coverage_50"] == coverage(samples, truth, 0.5)


def test_bad_input_is_refused():
    samples, truth = torch.zeros(4, 3), torch.ones(3)
    with pytest.raises(ValueError, match=r"samples \[S, \.\.\.\]"):
        crps(samples, torch.ones(2))
    with pytest.raises(ValueError, match="no entries"):
        crps(samples, truth, torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be bool"):
        crps(samples, truth, torch.ones(3))
    with pytest.raises(ValueError, match="sum \\|y\\|"):
        quantile_crps(samples, torch.zeros(3))
    with pytest.raises(ValueError, match="level"):
        coverage(samples, truth, level=1.0)
    with pytest.raises(ValueError, match="NaN"):
        crps(samples, torch.tensor([1.0, float("nan"), 0.0]))
