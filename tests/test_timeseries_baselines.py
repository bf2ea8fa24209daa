"""The time-series baselines against hand computations and closed forms: seasonal naive on a periodic
signal, DLinear's moving average with repeated ends, DLinear on a noiseless trend + season, the
Gaussian linear forecaster's spread on an AR(1), interpolation on linear functions, and fit's use of
the validation rows (early stopping only)."""

import math

import pytest
import torch

from difflab.timeseries import (
    FORECAST_BASELINES,
    IMPUTE_BASELINES,
    DLinear,
    GaussianLinear,
    SeasonalNaive,
    column_mean,
    fit,
    forecast_baseline,
    impute_baseline,
    linear_interpolation,
    series_decomposition,
)


def ar1(n: int, phi: float, columns: int, seed: int) -> torch.Tensor:
    """x_t = phi x_{t-1} + sqrt(1 - phi^2) eps_t from the stationary law N(0, 1): [n, columns]."""
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(n, columns, generator=g, dtype=torch.float64)
    x = torch.empty(n, columns, dtype=torch.float64)
    x[0] = eps[0]
    for t in range(1, n):
        x[t] = phi * x[t - 1] + math.sqrt(1 - phi**2) * eps[t]
    return x.float()


def trend_and_season(n: int) -> torch.Tensor:
    """Two columns of a linear trend plus a period-24 sine: [n, 2]."""
    t = torch.arange(n, dtype=torch.float64)[:, None]
    phase = torch.tensor([0.0, 1.0], dtype=torch.float64)
    return (t / n + torch.sin(2 * math.pi * t / 24 + phase)).float()


def test_seasonal_naive_continues_a_periodic_signal_exactly():
    t = torch.arange(200, dtype=torch.float64)
    signal = torch.stack([torch.sin(2 * math.pi * t / 24), torch.cos(2 * math.pi * t / 12)], -1)
    context, future = signal[None, 10:58], signal[None, 58:118]  # C = 48, H = 60
    y = SeasonalNaive(24).forecast(context, 60, samples=5)
    assert y.shape == (1, 1, 60, 2)
    torch.testing.assert_close(y[0], future, atol=1e-12, rtol=0)
    # y_{C+h} = y_{C+h-p*ceil(h/p)} on a non-periodic context: indices, 1-based
    ramp = torch.arange(1.0, 31.0)[None, :, None]  # y_i = i, C = 30
    got = SeasonalNaive(7).forecast(ramp, 15)[0, 0, :, 0]
    h = torch.arange(1, 16)
    torch.testing.assert_close(got, (30 + h - 7 * torch.ceil(h / 7)).float())
    with pytest.raises(ValueError, match="context >= period"):
        SeasonalNaive(24).forecast(torch.zeros(1, 23, 1), 4)


def test_decomposition_is_a_moving_average_with_repeated_ends():
    x = torch.randn(2, 10, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seasonal, trend = series_decomposition(x, kernel=5)
    padded = torch.cat([x[:, :1], x[:, :1], x, x[:, -1:], x[:, -1:]], dim=1)
    by_hand = torch.stack([padded[:, t : t + 5].mean(1) for t in range(10)], dim=1)
    torch.testing.assert_close(trend, by_hand)
    torch.testing.assert_close(seasonal, x - by_hand)
    torch.testing.assert_close(trend[:, 0], (3 * x[:, 0] + x[:, 1] + x[:, 2]) / 5)
    with pytest.raises(ValueError, match="odd kernel"):
        series_decomposition(x, kernel=4)


def test_dlinear_is_two_linears_on_the_decomposition_starting_at_the_context_mean():
    g = torch.Generator().manual_seed(1)
    model = DLinear(context=12, horizon=5, kernel=5)
    x = torch.randn(3, 12, 4, generator=g)
    # W_s = W_t = 1/C, b = 0: every step forecasts the mean of the context
    torch.testing.assert_close(model(x), x.mean(1, keepdim=True).expand(3, 5, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    seasonal, trend = series_decomposition(x, 5)
    w_s, w_t = model.seasonal.weight, model.trend.weight
    by_hand = (
        torch.einsum("hc,bck->bhk", w_s, seasonal)
        + torch.einsum("hc,bck->bhk", w_t, trend)
        + (model.seasonal.bias + model.trend.bias)[:, None]
    )
    torch.testing.assert_close(model(x), by_hand, atol=1e-5, rtol=1e-5)
    assert model.forecast(x, 5, samples=7).shape == (1, 3, 5, 4)
    with pytest.raises(ValueError, match="forecasts 5 steps"):
        model.forecast(x, 6)
    with pytest.raises(ValueError, match="reads 12 steps"):
        model(x[:, 1:])


def test_dlinear_forecasts_a_noiseless_trend_and_season():
    series = trend_and_season(1600)
    train, val, test = series[:1000], series[1000:1300], series[1300:]
    model = fit(DLinear(48, 24), train, val, steps=600, every=100, lr=1e-2)
    windows = test.unfold(0, 72, 1).transpose(1, 2)
    y = model.forecast(windows[:, :48], 24)[0]
    mse = float((y - windows[:, 48:]).square().mean())
    assert mse < 1e-3, mse  # the series' variance is about 0.6


def test_gaussian_linear_learns_the_ar1_spread():
    phi, horizon = 0.8, 16
    series = ar1(12000, phi, columns=2, seed=0)
    model = fit(GaussianLinear(24, horizon), series[:10000], series[10000:], steps=1000)
    context = ar1(2000, phi, columns=2, seed=1).unfold(0, 24, 24).transpose(1, 2)
    mean, std = model.distribution(context)
    h = torch.arange(1, horizon + 1)
    closed_form = torch.sqrt(1 - phi ** (2 * h.double())).float()
    for step in (0, horizon - 1):  # h = 1: 0.6; h = 16: 0.9999
        got = std[:, step].mean()
        assert abs(got / closed_form[step] - 1) < 0.1, (step, float(got))
    # E[x_{C+1} | context] = phi x_C, up to the fit's noise (small beside the spread 0.6)
    error = (mean[:, 0] - phi * context[:, -1]).square().mean().sqrt()
    assert error < 0.1, float(error)
    draws = model.forecast(context, horizon, 4000, generator=torch.Generator().manual_seed(2))
    assert draws.shape == (4000, *mean.shape)
    torch.testing.assert_close(draws.mean(0), mean, atol=0.08, rtol=0)
    torch.testing.assert_close(draws.std(0), std, atol=0.08, rtol=0)
    again = model.forecast(context, horizon, 4000, generator=torch.Generator().manual_seed(2))
    assert torch.equal(draws, again)


def test_fit_reads_val_only_to_choose_the_best_state():
    series = ar1(700, 0.9, columns=3, seed=3)
    train, val = series[:500], series[500:]
    noisy_val = val + 3 * torch.randn(val.shape, generator=torch.Generator().manual_seed(4))

    def trained(steps: int, every: int, val: torch.Tensor) -> DLinear:
        model = DLinear(16, 8, kernel=5)
        g = torch.Generator().manual_seed(5)
        return fit(model, train, val, steps=steps, every=every, patience=100, generator=g)

    # one evaluation at the end: the trajectory (and the result) cannot depend on val
    trajectory = [trained(s, s, val).state_dict() for s in (10, 20, 30, 40)]
    for a, b in zip(trained(40, 40, noisy_val).state_dict().values(), trajectory[-1].values()):
        assert torch.equal(a, b)
    # evaluated every 10 steps, the result is the trajectory's state of lowest val loss
    for data in (val, noisy_val):
        got = trained(40, 10, data).state_dict()
        windows = data.unfold(0, 24, 1).transpose(1, 2)
        losses = []
        for state in trajectory:
            model = DLinear(16, 8, kernel=5)
            model.load_state_dict(state)
            losses.append(float(model.loss(windows[:, :16], windows[:, 16:]).detach()))
        best = trajectory[min(range(4), key=losses.__getitem__)]
        assert all(torch.equal(got[k], best[k]) for k in best)


def test_linear_interpolation_is_exact_on_lines_and_nearest_at_the_ends():
    length = 12
    t = torch.arange(length, dtype=torch.float64)[:, None]
    values = (torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64) + t * 0.25)[None]
    given = torch.zeros(1, length, 4, dtype=torch.bool)
    given[0, [0, 3, 4, 11], 0] = True  # ends given: exact everywhere
    given[0, [2, 7], 1] = True  # nearest given value before 2 and after 7
    given[0, 5, 2] = True  # one given entry: constant
    values = torch.where(given, values, torch.nan)  # entries not given are never read
    filled = linear_interpolation(values, given)[0, 0]
    line = 0.25 * t[:, 0]
    torch.testing.assert_close(filled[:, 0], 1.0 + line)
    expected = -2.0 + line.clamp(0.5, 1.75)
    torch.testing.assert_close(filled[:, 1], expected)
    torch.testing.assert_close(filled[:, 2], torch.full((length,), 0.5 + 1.25, dtype=torch.float64))
    torch.testing.assert_close(filled[:, 3], torch.zeros(length, dtype=torch.float64))


def test_column_mean_fills_with_the_given_mean_and_keeps_given_entries():
    values = torch.tensor([[[1.0, 5.0], [3.0, torch.nan], [torch.nan, torch.nan], [8.0, 7.0]]])
    given = ~values.isnan()
    given[0, 0, 1] = given[0, 3, 1] = False  # column 1: nothing given
    filled = column_mean(values, given)
    assert filled.shape == (1, 1, 4, 2)
    torch.testing.assert_close(filled[0, 0, :, 0], torch.tensor([1.0, 3.0, 4.0, 8.0]))
    torch.testing.assert_close(filled[0, 0, :, 1], torch.zeros(4))


def test_registries_name_the_baselines():
    assert isinstance(forecast_baseline("seasonal_naive", 96, 24, period=12), SeasonalNaive)
    assert type(forecast_baseline("dlinear", 96, 24)) is DLinear
    assert type(forecast_baseline("gaussian_linear", 96, 24)) is GaussianLinear
    assert [impute_baseline(n) for n in IMPUTE_BASELINES] == [linear_interpolation, column_mean]
    assert len(FORECAST_BASELINES) == 3
    with pytest.raises(ValueError, match="dlinear"):
        forecast_baseline("dlinaer", 96, 24)
