"""Forecasting and imputation baselines on standardized series, the yardsticks of the diffusion model.

    model = fit(DLinear(96, 96), train, val)       # train [N, K], val [M, K] standardized rows
    y = model.forecast(context, 96)                # context [B, C, K] -> [S, B, H, K]
    filled = linear_interpolation(values, given)   # [B, L, K], given bool -> [1, B, L, K]

Every forecaster has ``forecast(context, horizon, samples=1, generator=None) -> [S, B, H, K]``. A
point forecaster (:class:`SeasonalNaive`, :class:`DLinear`) returns S = 1 whatever ``samples`` is (the
one forecast broadcasts against the targets); :class:`GaussianLinear` draws S = ``samples``. Every
imputer has ``impute(values, given) -> [1, B, L, K]``: it reads ``values`` only where ``given`` (the
rest may be NaN) and keeps the given entries. Zero is the training mean in standardized units.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.utils.names import check_name

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

FORECAST_BASELINES = ("seasonal_naive", "dlinear", "gaussian_linear")
IMPUTE_BASELINES = ("linear_interpolation", "column_mean")


def _check_series(name: str, x: Tensor) -> None:
    if x.ndim != 3:
        raise ValueError(f"{name} must be [B, T, K], got shape {list(x.shape)}")


class SeasonalNaive:
    """y_{C+h} = y_{C+h-p*ceil(h/p)}: the last period repeated (Hyndman & Athanasopoulos 2021)."""

    def __init__(self, period: int = 24) -> None:
        if period < 1:
            raise ValueError(f"SeasonalNaive needs period >= 1, got {period}")
        self.period = period

    def forecast(
        self,
        context: Tensor,
        horizon: int,
        samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The point forecast [1, B, H, K] of context [B, C, K] (C >= period)."""
        _check_series("context", context)
        length = context.shape[1]
        if horizon < 1:
            raise ValueError(f"SeasonalNaive needs horizon >= 1, got {horizon}")
        if length < self.period:
            raise ValueError(f"SeasonalNaive needs context >= period {self.period}, got {length}")
        steps = torch.arange(horizon, device=context.device)  # h - 1
        return context[:, length - self.period + steps % self.period][None]


def series_decomposition(x: Tensor, kernel: int = 25) -> tuple[Tensor, Tensor]:
    """(x - trend, trend) of x [B, T, K], trend the moving average of ``kernel`` steps with the first
    and last values repeated (kernel - 1) / 2 times at the ends (Zeng et al. 2023, DLinear)."""
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"the moving average needs an odd kernel >= 1, got {kernel}")
    _check_series("x", x)
    pad = (kernel - 1) // 2
    padded = torch.cat([x[:, :1].expand(-1, pad, -1), x, x[:, -1:].expand(-1, pad, -1)], dim=1)
    trend = F.avg_pool1d(padded.transpose(1, 2), kernel, stride=1).transpose(1, 2)
    return x - trend, trend


def _time_linear(context: int, horizon: int, weight: float) -> nn.Linear:
    """A Linear(context -> horizon) with every weight ``weight`` and zero bias (no global RNG)."""
    linear = nn.utils.skip_init(nn.Linear, context, horizon)
    with torch.no_grad():
        linear.weight.fill_(weight)
        linear.bias.zero_()
    return linear


def _decomposed_linear(seasonal: nn.Linear, trend: nn.Linear, average: Tensor, x: Tensor) -> Tensor:
    """W_s (x - A x) + W_t A x + b_s + b_t = (W_s + (W_t - W_s) A) x + b along time, shared across
    the columns of x [B, C, K], with A the moving-average matrix: [B, H, K]."""
    weight = seasonal.weight + (trend.weight - seasonal.weight) @ average
    return F.linear(x.transpose(1, 2), weight, seasonal.bias + trend.bias).transpose(1, 2)


class DLinear(nn.Module):
    """y = W_s (x - trend) + W_t trend + b along time, one map for all columns; W_s, W_t start at
    1/C, b at 0 (Zeng et al. 2023, "Are Transformers Effective for Time Series Forecasting?")."""

    def __init__(self, context: int, horizon: int, kernel: int = 25) -> None:
        super().__init__()
        if context < 1 or horizon < 1:
            raise ValueError(f"DLinear needs context and horizon >= 1, got {context}, {horizon}")
        self.context, self.horizon, self.kernel = context, horizon, kernel
        self.seasonal = _time_linear(context, horizon, 1 / context)
        self.trend = _time_linear(context, horizon, 1 / context)
        # trend = A x: the decomposition of the identity's columns (A[t, s] = d trend_t / d x_s)
        average = series_decomposition(torch.eye(context)[None], kernel)[1][0]
        self.register_buffer("average", average, persistent=False)

    def _input(self, context: Tensor, horizon: int | None = None) -> Tensor:
        _check_series("context", context)
        if context.shape[1] != self.context:
            raise ValueError(
                f"{type(self).__name__} reads {self.context} steps, got {context.shape[1]}"
            )
        if horizon is not None and horizon != self.horizon:
            raise ValueError(f"{type(self).__name__} forecasts {self.horizon} steps, not {horizon}")
        return context.to(self.seasonal.weight.dtype)

    def forward(self, context: Tensor) -> Tensor:
        """The forecast [B, H, K] of context [B, C, K]."""
        return _decomposed_linear(self.seasonal, self.trend, self.average, self._input(context))

    def loss(self, context: Tensor, target: Tensor) -> Tensor:
        """The mean squared error of the forecast against target [B, H, K]."""
        return F.mse_loss(self(context), target.to(self.seasonal.weight.dtype))

    @torch.no_grad()
    def forecast(
        self,
        context: Tensor,
        horizon: int,
        samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The point forecast [1, B, H, K] (S = 1 whatever ``samples``)."""
        return self(self._input(context, horizon))[None]


class GaussianLinear(DLinear):
    """y ~ N(mu, sigma^2) per (step, column): mu the DLinear form, log sigma a second DLinear head on
    the same decomposition (starting at sigma = 1), fitted by the Gaussian NLL (Zeng et al. 2023)."""

    def __init__(self, context: int, horizon: int, kernel: int = 25) -> None:
        super().__init__(context, horizon, kernel)
        self.log_std_seasonal = _time_linear(context, horizon, 0.0)
        self.log_std_trend = _time_linear(context, horizon, 0.0)

    def _mean_log_std(self, context: Tensor) -> tuple[Tensor, Tensor]:
        x = self._input(context)
        return self(x), _decomposed_linear(
            self.log_std_seasonal, self.log_std_trend, self.average, x
        )

    def distribution(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, sigma), each [B, H, K], of the forecast of context [B, C, K]."""
        mean, log_std = self._mean_log_std(context)
        return mean, log_std.exp()

    def loss(self, context: Tensor, target: Tensor) -> Tensor:
        """The mean Gaussian negative log-likelihood -log N(y; mu, sigma^2) of target [B, H, K]."""
        mean, log_std = self._mean_log_std(context)
        z = (target.to(mean.dtype) - mean) * (-log_std).exp()
        return (log_std + z.square() / 2).mean() + math.log(2 * math.pi) / 2

    @torch.no_grad()
    def forecast(
        self,
        context: Tensor,
        horizon: int,
        samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``samples`` draws y = mu + sigma * eps, [S, B, H, K], eps from ``generator``."""
        mean, std = self.distribution(self._input(context, horizon))
        eps = torch.randn((samples, *mean.shape), generator=generator, dtype=mean.dtype)
        return mean + std * eps.to(mean.device)


def _windows(series: Tensor, length: int) -> Tensor:
    """All sliding windows [W, length, K] of series [N, K] (a view, stride 1)."""
    if series.ndim != 2 or series.shape[0] < length:
        raise ValueError(
            f"a series [N, K] with N >= {length} rows is needed, got {list(series.shape)}"
        )
    return series.unfold(0, length, 1).transpose(1, 2)


def fit(
    model: DLinear,
    train: Tensor,
    val: Tensor,
    *,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 5e-3,
    every: int = 100,
    patience: int = 5,
    generator: torch.Generator | None = None,
) -> DLinear:
    """Adam on ``model.loss`` (MSE for DLinear, NLL for GaussianLinear) over random sliding windows of
    ``train`` [N, K]; every ``every`` steps the loss on all windows of ``val`` [M, K] picks the best
    state, and ``patience`` evaluations without improvement stop early (Zeng et al. 2023)."""
    if steps < 1 or batch_size < 1 or every < 1 or patience < 1:
        raise ValueError(
            f"fit needs steps, batch_size, every, patience >= 1, got {steps}, {batch_size}, {every}, "
            f"{patience}"
        )
    length = model.context + model.horizon
    dtype = model.seasonal.weight.dtype
    train_windows = _windows(train.to(dtype), length)
    val_windows = _windows(val.to(dtype), length)
    g = torch.Generator().manual_seed(0) if generator is None else generator
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    best, best_state, waited = math.inf, None, 0
    for step in range(1, steps + 1):
        starts = torch.randint(len(train_windows), (batch_size,), generator=g)
        batch = train_windows[starts]
        loss = model.loss(batch[:, : model.context], batch[:, model.context :])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % every and step < steps:
            continue
        with torch.no_grad():
            score = float(
                model.loss(val_windows[:, : model.context], val_windows[:, model.context :])
            )
        if score < best:
            best, best_state, waited = score, copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
            if waited >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval()


def linear_interpolation(values: Tensor, given: Tensor) -> Tensor:
    """x_t = x_a + (t - a) / (b - a) (x_b - x_a) between the nearest given a <= t <= b per column, the
    nearest given value beyond the first/last one, 0 in a column with none: [1, B, L, K]."""
    observed, given = _observed(values, given)
    length = values.shape[1]
    t = torch.arange(length, device=values.device).view(1, -1, 1).expand_as(given)
    before = torch.where(given, t, -1).cummax(dim=1).values
    after = torch.where(given, t, length).flip(1).cummin(dim=1).values.flip(1)
    has_before, has_after = before >= 0, after < length
    x_a = observed.gather(1, before.clamp(min=0))
    x_b = observed.gather(1, after.clamp(max=length - 1))
    share = (t - before) / (after - before).clamp(min=1)
    between = x_a + share.to(observed.dtype) * (x_b - x_a)
    filled = torch.where(
        has_before & has_after,
        between,
        torch.where(has_before, x_a, torch.where(has_after, x_b, 0)),
    )
    return filled[None]


def column_mean(values: Tensor, given: Tensor) -> Tensor:
    """x_t = the mean of the window's given entries of the column (0 with none) where not given;
    given entries kept: [1, B, L, K]."""
    observed, given = _observed(values, given)
    count = given.sum(dim=1, keepdim=True)
    mean = observed.sum(dim=1, keepdim=True) / count.clamp(min=1)
    return torch.where(given, observed, mean)[None]


def _observed(values: Tensor, given: Tensor) -> tuple[Tensor, Tensor]:
    """values with the entries that are not given set to 0 (NaN there never spreads), and given."""
    _check_series("values", values)
    if given.shape != values.shape or given.dtype != torch.bool:
        raise ValueError(
            f"given must be a bool mask of the shape of values {list(values.shape)}, got "
            f"{given.dtype} {list(given.shape)}"
        )
    return torch.where(given, values, torch.zeros((), dtype=values.dtype)), given


def forecast_baseline(
    name: str, context: int, horizon: int, *, period: int = 24, kernel: int = 25
) -> SeasonalNaive | DLinear:
    """The forecaster ``name`` of FORECAST_BASELINES (the linear ones untrained: see :func:`fit`)."""
    check_name("forecast baseline", name, FORECAST_BASELINES)
    if name == "seasonal_naive":
        return SeasonalNaive(period)
    return (DLinear if name == "dlinear" else GaussianLinear)(context, horizon, kernel)


def impute_baseline(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The imputer ``name`` of IMPUTE_BASELINES: ``impute(values, given) -> [1, B, L, K]``."""
    check_name("imputation baseline", name, IMPUTE_BASELINES)
    return linear_interpolation if name == "linear_interpolation" else column_mean
