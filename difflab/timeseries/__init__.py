"""Layer 4: time series: probabilistic forecasting and imputation with diffusion, and the baselines
it is judged against, on standardized series.

    model = fit(DLinear(96, 96), train, val)        # train [N, K], val [M, K]
    y = model.forecast(context, 96)                 # context [B, C, K] -> [S, B, H, K]
    filled = linear_interpolation(values, given)    # [B, L, K], given bool -> [1, B, L, K]

- :mod:`~difflab.timeseries.baselines`: seasonal naive, DLinear, a Gaussian linear forecaster,
  linear interpolation and the column mean; ``fit`` trains the linear ones.
"""

from difflab.timeseries.baselines import (
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

__all__ = [
    "FORECAST_BASELINES",
    "IMPUTE_BASELINES",
    "DLinear",
    "GaussianLinear",
    "SeasonalNaive",
    "column_mean",
    "fit",
    "forecast_baseline",
    "impute_baseline",
    "linear_interpolation",
    "series_decomposition",
]
