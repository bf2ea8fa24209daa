"""Layer 4: time series: probabilistic forecasting and imputation with diffusion (CSDI-style,
Tashiro et al. 2021), and the baselines it is judged against, on standardized series.

    run(TimeSeriesTask(), "configs/ts_ett.toml", ["data.path=ETTh1.csv"])   # `difflab ts train`
    model = TimeSeriesModel.load("runs/ts_ett")
    paths = model.forecast(history, samples=50)     # [N, C, K] -> [S, N, H, K]
    paths = self_guided_sample(model, values, given, 50, loss="quantile")  # an unconditional model
    scores = evaluate(model, "ETTh1.csv", "forecast")   # test split, baselines beside
    model = fit(DLinear(96, 96), train, val)        # a baseline: train [N, K], val [M, K]

- :mod:`~difflab.timeseries.model`: :class:`TimeSeriesModel`, a denoiser over standardized
  windows conditioned on their given entries (model-folder type "timeseries").
- :mod:`~difflab.timeseries.train`: :class:`TimeSeriesTask`, its task of the one training loop.
- :mod:`~difflab.timeseries.guidance`: an unconditional model forecasting by observation
  self-guidance and refining forecasts by its implicit density (TSDiff, Kollovieh et al. 2023).
- :mod:`~difflab.timeseries.evaluate`: CRPS, CRPS-sum, MSE / MAE and coverage on the test split.
- :mod:`~difflab.timeseries.baselines`: seasonal naive, DLinear, a Gaussian linear forecaster,
  linear interpolation and the column mean; ``fit`` trains the linear ones.
- :mod:`~difflab.timeseries.plot`: forecast fan charts.
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
from difflab.timeseries.evaluate import evaluate
from difflab.timeseries.guidance import refine, self_guided_sample
from difflab.timeseries.model import TimeSeriesModel
from difflab.timeseries.plot import plot_forecast
from difflab.timeseries.train import TimeSeriesTask

__all__ = [
    "FORECAST_BASELINES",
    "IMPUTE_BASELINES",
    "DLinear",
    "GaussianLinear",
    "SeasonalNaive",
    "TimeSeriesModel",
    "TimeSeriesTask",
    "column_mean",
    "evaluate",
    "fit",
    "forecast_baseline",
    "impute_baseline",
    "linear_interpolation",
    "plot_forecast",
    "refine",
    "self_guided_sample",
    "series_decomposition",
]
