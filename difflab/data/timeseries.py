"""Multivariate time series from CSV files (ETT and the like), their standard splits, forecast and
training windows, and the missing-value masks of probabilistic imputation (CSDI, Tashiro et al. 2021).

    series = TimeSeries.read_csv("ETTh1.csv")            # values [N, K] float64, observed [N, K] bool
    train, val, test = split(series)                     # ETT: 12 / 4 / 4 months (Zhou et al. 2021)
    norm = fit_standardizer(train)                       # a Normalizer("meanstd") saved with a model
    w = forecast_windows(val, test, context=96, horizon=96, stride=1)   # test windows, CSDI/Informer
    cond = training_mask(w.observed, "mix", generator, context=96)      # True = given to the model

A cell that is empty or NaN is missing: its value is 0.0 and ``observed`` is False there, so a
series never holds NaN. Row numbers are the file's data rows (0 = the first row below the header):
``TimeSeries.start`` and ``Windows.starts`` say where every window came from.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from difflab.data.normalization import Normalizer
from difflab.utils.names import check_name

__all__ = [
    "ETT_COLUMNS",
    "MASK_STRATEGIES",
    "SPLITS",
    "Splits",
    "TimeSeries",
    "Windows",
    "block_mask",
    "fit_standardizer",
    "forecast_windows",
    "history_mask",
    "random_mask",
    "split",
    "training_mask",
    "windows",
]

ETT_COLUMNS = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
SPLITS = ("auto", "ett_hour", "ett_minute", "fractions")
MASK_STRATEGIES = ("random", "block", "forecast", "mix")
_ETT_HOUR_ROWS = (12 * 30 * 24, 4 * 30 * 24, 4 * 30 * 24)  # 8640 / 2880 / 2880 (Informer)
_FRACTIONS = (0.7, 0.1, 0.2)  # train / val / test (Autoformer, Wu et al. 2021)


@dataclass(frozen=True, eq=False)
class TimeSeries:
    """N time steps of K columns: ``values`` [N, K] float64 (0.0 where missing), ``observed`` [N, K]
    bool, column names, date texts and ``start``, the file row of the first step."""

    values: Tensor
    observed: Tensor
    columns: tuple[str, ...]
    dates: tuple[str, ...]
    start: int = 0

    def __post_init__(self) -> None:
        values = torch.as_tensor(self.values).detach().to("cpu", torch.float64)
        observed = torch.as_tensor(self.observed).detach().to("cpu", torch.bool)
        if values.ndim != 2 or values.shape != observed.shape or 0 in values.shape:
            raise ValueError(
                f"time series: expected values and observed of one shape [N, K] with N, K >= 1, "
                f"got {list(values.shape)} and {list(observed.shape)}"
            )
        if not bool(torch.isfinite(values[observed]).all()):
            raise ValueError("time series: values contain NaN or inf where observed is True")
        columns, dates = tuple(self.columns), tuple(self.dates)
        if len(columns) != values.shape[1] or len(set(columns)) != len(columns):
            raise ValueError(
                f"time series: {values.shape[1]} columns need as many distinct names, got {columns}"
            )
        if len(dates) != values.shape[0]:
            raise ValueError(f"time series: {values.shape[0]} rows but {len(dates)} dates")
        if self.start < 0:
            raise ValueError(f"time series: start must be a file row >= 0, got {self.start}")
        object.__setattr__(self, "values", torch.where(observed, values, 0.0))
        object.__setattr__(self, "observed", observed)
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "dates", dates)

    @property
    def length(self) -> int:
        """N, the number of time steps."""
        return self.values.shape[0]

    @property
    def dim(self) -> int:
        """K, the number of columns."""
        return self.values.shape[1]

    @property
    def end(self) -> int:
        """The file row just after the last step, start + N."""
        return self.start + self.length

    def describe(self) -> str:
        """'rows a-b' of the file, for messages."""
        return f"rows {self.start}-{self.end - 1}"

    def select(self, columns: str | Sequence[str]) -> TimeSeries:
        """The columns named (``"all"``, one name such as ``"OT"``, or a list of names), in that order."""
        if isinstance(columns, str):
            columns = self.columns if columns == "all" else [columns]
        if len(columns) == 0:
            raise ValueError("time series: select at least one column")
        for name in columns:
            check_name("column", name, self.columns)
        index = [self.columns.index(name) for name in columns]
        return replace(
            self,
            values=self.values[:, index],
            observed=self.observed[:, index],
            columns=tuple(columns),
        )

    def rows(self, begin: int, end: int) -> TimeSeries:
        """Steps begin .. end - 1 (0 <= begin < end <= N), with ``start`` moved to the file row."""
        if not 0 <= begin < end <= self.length:
            raise ValueError(
                f"time series: rows {begin}..{end} are not a non-empty range of its {self.length} rows"
            )
        return replace(
            self,
            values=self.values[begin:end],
            observed=self.observed[begin:end],
            dates=self.dates[begin:end],
            start=self.start + begin,
        )

    @classmethod
    def read_csv(
        cls,
        path: str | os.PathLike[str],
        date_column: str | None = "date",
        columns: str | Sequence[str] = "all",
    ) -> TimeSeries:
        """The series in a CSV file with a header row: the column ``date_column`` (if the file has
        it) gives the dates, every other column must be numeric; empty and NaN cells are missing."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"time series file {path} does not exist")
        with open(path, newline="") as f:
            table = list(csv.reader(f))
        if not table:
            raise ValueError(f"{path}: empty file (expected a header row of column names)")
        header = [name.strip() for name in table[0]]
        body = [row for row in table[1:] if row]
        for line, row in enumerate(table[1:], start=2):
            if row and len(row) != len(header):
                raise ValueError(
                    f"{path} line {line}: {len(row)} cells, the header has {len(header)}"
                )
        has_dates = date_column is not None and date_column in header
        numeric = [name for name in header if not (has_dates and name == date_column)]
        if not numeric:
            raise ValueError(f"{path}: no numeric columns (header {header})")
        if not body:
            raise ValueError(f"{path}: no data rows below the header")
        cells = np.array(body, dtype=str)
        dates = (
            tuple(cells[:, header.index(date_column)].tolist())
            if has_dates
            else tuple(str(r) for r in range(len(body)))
        )
        values = np.stack(
            [_numbers(cells[:, header.index(name)], name, path) for name in numeric], 1
        )
        observed = ~np.isnan(values)
        series = cls(
            values=torch.from_numpy(np.nan_to_num(values, nan=0.0)),
            observed=torch.from_numpy(observed),
            columns=tuple(numeric),
            dates=dates,
        )
        return series.select(columns)


def _float(cell: str) -> float:
    """float(cell), or inf (refused below) when the cell is not a number."""
    try:
        return float(cell)
    except ValueError:
        return math.inf


def _numbers(cells: np.ndarray, column: str, path: Path) -> np.ndarray:
    """The float64 values of one column's cells, NaN where a cell is empty or NaN; a ValueError names
    the first cell that is not a finite number."""
    text = np.char.strip(cells)
    text = np.where(text == "", "nan", text)
    try:
        values = text.astype(np.float64)
    except ValueError:
        values = np.array([_float(cell) for cell in text.tolist()])
    bad = np.flatnonzero(np.isinf(values))
    if len(bad):
        row = int(bad[0])
        raise ValueError(
            f"{path} line {row + 2} (data row {row}), column {column!r}: {str(text[row])!r} is not a "
            "finite number (only the date column may hold text: pass date_column=...)"
        )
    return values


class Splits(NamedTuple):
    """Train, validation and test parts of a series, contiguous and in that order."""

    train: TimeSeries
    val: TimeSeries
    test: TimeSeries


def _step(dates: tuple[str, ...]) -> timedelta | None:
    """The time between the first two dates, or None when they are not ISO dates."""
    try:
        return datetime.fromisoformat(dates[1]) - datetime.fromisoformat(dates[0])
    except (ValueError, IndexError):
        return None


def split(series: TimeSeries, kind: str = "auto") -> Splits:
    """Train / val / test rows: "ett_hour" 8640 / 2880 / 2880 (12 / 4 / 4 months of 30 days, Zhou et
    al. 2021), "ett_minute" four times as many, "fractions" 0.7 / 0.2 test / the rest (Wu et al. 2021);
    "auto": ETT's split when every column is an ETT column, ett_minute when the first two dates are 15
    minutes apart and ett_hour otherwise (if the series is long enough), else "fractions"."""
    check_name("split", kind, SPLITS)
    if kind == "auto":
        kind = "fractions"
        if set(series.columns) <= set(ETT_COLUMNS):
            minute = _step(series.dates) == timedelta(minutes=15)
            ett = "ett_minute" if minute else "ett_hour"
            if series.length >= sum(_ETT_HOUR_ROWS) * (4 if minute else 1):
                kind = ett
    if kind == "fractions":
        train = int(series.length * _FRACTIONS[0])
        test = int(series.length * _FRACTIONS[2])
        sizes = (train, series.length - train - test, test)
        if min(sizes) < 1:
            raise ValueError(
                f"split 'fractions': {series.length} rows are too few for train / val / test {sizes}"
            )
    else:
        sizes = tuple(n * (4 if kind == "ett_minute" else 1) for n in _ETT_HOUR_ROWS)
        if series.length < sum(sizes):
            raise ValueError(
                f"split {kind!r} needs {sum(sizes)} rows ({' / '.join(map(str, sizes))}), the series "
                f"has {series.length}"
            )
    bounds = np.cumsum((0, *sizes)).tolist()
    return Splits(*(series.rows(a, b) for a, b in pairwise(bounds)))


def fit_standardizer(series: TimeSeries) -> Normalizer:
    """Normalizer(K, "meanstd") with each column's mean and std (1/n) over its observed entries only
    (fit it on the training split, as Informer's StandardScaler; Zhou et al. 2021)."""
    counts = series.observed.sum(0)
    if bool((counts == 0).any()):
        empty = [c for c, n in zip(series.columns, counts.tolist()) if n == 0]
        raise ValueError(f"fit_standardizer: column(s) {', '.join(empty)} have no observed values")
    mean = series.values.sum(0) / counts
    var = torch.where(series.observed, (series.values - mean).square(), 0.0).sum(0) / counts
    big = torch.finfo(torch.float64).max
    norm = Normalizer(series.dim, "meanstd")
    norm.mean.copy_(mean)
    norm.std.copy_(var.sqrt())
    norm.low.copy_(torch.where(series.observed, series.values, big).amin(0))
    norm.high.copy_(torch.where(series.observed, series.values, -big).amax(0))
    return norm


class Windows(NamedTuple):
    """Windows of a series: values [W, L, K] float64, observed [W, L, K] bool and starts [W] int64,
    the file row of each window's first step."""

    values: Tensor
    observed: Tensor
    starts: Tensor


def windows(
    series: TimeSeries, length: int, stride: int = 1, history: TimeSeries | None = None
) -> Windows:
    """Every ``stride``-th window of ``length`` steps that lies inside ``series``, the first starting
    at its first row; with ``history`` (the rows just before ``series``, contiguous) the windows run
    over history then series, the first starting at history's first row. The windows are views of
    the series' tensors (no copy: clone before writing into them)."""
    if length < 1 or stride < 1:
        raise ValueError(f"windows need length >= 1 and stride >= 1, got {length} and {stride}")
    if history is not None:
        series = _join(history, series)
    if length > series.length:
        raise ValueError(
            f"window length {length} is longer than the {series.length} rows of the series "
            f"({series.describe()})"
        )
    offsets = torch.arange(0, series.length - length + 1, stride)
    return Windows(
        series.values.unfold(0, length, stride).transpose(1, 2),  # views, no copy
        series.observed.unfold(0, length, stride).transpose(1, 2),
        series.start + offsets,
    )


def _join(before: TimeSeries, after: TimeSeries) -> TimeSeries:
    """``before`` followed by ``after``, which must start where it ends, with the same columns."""
    if before.end != after.start or before.columns != after.columns:
        raise ValueError(
            f"time series: cannot join {before.describe()} {before.columns} to {after.describe()} "
            f"{after.columns} (need contiguous rows and the same columns)"
        )
    return replace(
        before,
        values=torch.cat([before.values, after.values]),
        observed=torch.cat([before.observed, after.observed]),
        dates=before.dates + after.dates,
    )


def forecast_windows(
    before: TimeSeries, split: TimeSeries, context: int, horizon: int, stride: int
) -> Windows:
    """Windows of context + horizon steps whose last ``horizon`` steps lie inside ``split`` and whose
    first ``context`` may reach into the end of ``before`` (the rows just before it): the first
    window's horizon starts at the split's first row (Informer's border, Zhou et al. 2021)."""
    if context < 0 or horizon < 1:
        raise ValueError(
            f"forecast windows need context >= 0 and horizon >= 1, got {context}, {horizon}"
        )
    if before.end != split.start:
        raise ValueError(
            f"forecast windows: the rows before the split must end where it starts; got "
            f"{before.describe()} then {split.describe()}"
        )
    reach = min(context, before.length)
    if context + horizon > reach + split.length:
        raise ValueError(
            f"horizon {horizon} + context {context} is longer than the {reach + split.length} rows of "
            f"the split and the rows before it (rows {split.start - reach}-{split.end - 1})"
        )
    history = before.rows(before.length - reach, before.length) if reach else None
    return windows(split, context + horizon, stride, history)


# ---------------------------------------------------------------------- masks


def _check_observed(observed: Tensor) -> Tensor:
    if observed.ndim != 3 or observed.dtype != torch.bool:
        raise ValueError(
            f"masks need observed as a bool tensor [W, L, K], got {observed.dtype} "
            f"{list(observed.shape)}"
        )
    return observed


def _rates(rate: float | Tensor, windows: int, device: torch.device) -> Tensor:
    """The hidden fraction of each window, [W] float64 in [0, 1]."""
    rate = torch.as_tensor(rate, dtype=torch.float64, device=device)
    if rate.ndim > 1 or (rate.ndim == 1 and len(rate) != windows):
        raise ValueError(
            f"rate must be a number or one per window [{windows}], got {list(rate.shape)}"
        )
    if not bool(((rate >= 0) & (rate <= 1)).all()):
        raise ValueError("rate must lie in [0, 1]")
    return rate.expand(windows)


def random_mask(
    observed: Tensor, rate: float | Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """cond = observed minus round(rate * n_obs) observed entries of each window chosen uniformly at
    random (CSDI's random strategy, Tashiro et al. 2021); ``rate`` a number or one per window [W]."""
    w = len(_check_observed(observed))
    flat = observed.reshape(w, -1)
    hide = torch.round(_rates(rate, w, observed.device) * flat.sum(1)).long()
    score = torch.rand(flat.shape, generator=generator, device=observed.device)
    score = torch.where(flat, score, 2.0)  # unobserved entries sort last
    rank = torch.empty_like(flat, dtype=torch.long)
    rank.scatter_(
        1, score.argsort(1), torch.arange(flat.shape[1], device=observed.device).expand_as(flat)
    )
    return (flat & (rank >= hide[:, None])).reshape(observed.shape)


def block_mask(
    observed: Tensor,
    rate: float | Tensor,
    generator: torch.Generator | None = None,
    block: tuple[int, int] = (4, 24),
) -> Tensor:
    """cond = observed minus contiguous blocks of min..max steps (uniform lengths) per column, each
    starting at a random still-given entry, until at least ``rate`` of the column's observed entries
    are hidden (block missingness, as in the imputation benchmarks after CSDI, Tashiro et al. 2021)."""
    w, length, k = _check_observed(observed).shape
    low, high = block
    if not 1 <= low <= high:
        raise ValueError(f"block lengths must satisfy 1 <= min <= max, got {block}")
    given = observed.permute(0, 2, 1).reshape(w * k, length).clone()  # one row per (window, column)
    target = torch.ceil(_rates(rate, w, observed.device).repeat_interleave(k) * given.sum(1))
    hidden = torch.zeros(w * k, device=observed.device)
    steps = torch.arange(length, device=observed.device)
    while bool(
        (active := hidden < target).any()
    ):  # every round hides >= 1 entry of each active row
        score = torch.where(
            given, torch.rand(given.shape, generator=generator, device=given.device), -1.0
        )
        first = score.argmax(1, keepdim=True)
        size = torch.randint(low, high + 1, (w * k, 1), generator=generator, device=given.device)
        cut = active[:, None] & given & (steps >= first) & (steps < first + size)
        hidden += cut.sum(1)
        given &= ~cut
    return given.reshape(w, k, length).permute(0, 2, 1).contiguous()


def history_mask(observed: Tensor, context: int) -> Tensor:
    """cond = observed on the first ``context`` steps, False after them: forecasting, every later
    observed entry is a target (Tashiro et al. 2021)."""
    length = _check_observed(observed).shape[1]
    if not 0 <= context < length:
        raise ValueError(f"history mask: context must be in [0, {length - 1}], got {context}")
    cond = observed.clone()
    cond[:, context:] = False
    return cond


def training_mask(
    observed: Tensor,
    strategy: str,
    generator: torch.Generator | None = None,
    context: int | None = None,
) -> Tensor:
    """The conditioning mask of a training batch: "random" (rate ~ U(0, 1) per window, CSDI's
    training masks, Tashiro et al. 2021), "block" (rate ~ U(0, 1)), "forecast" (the first ``context``
    steps given) or "mix" (each window one of those at random; forecast only when ``context`` is set)."""
    check_name("mask strategy", strategy, MASK_STRATEGIES)
    w = len(_check_observed(observed))
    if strategy == "forecast" or (strategy == "mix" and context is not None):
        if context is None:
            raise ValueError("mask strategy 'forecast' needs context (the number of given steps)")
        forecast = history_mask(observed, context)
    if strategy == "forecast":
        return forecast
    rate = torch.rand(w, generator=generator, device=observed.device, dtype=torch.float64)
    if strategy == "random":
        return random_mask(observed, rate, generator)
    if strategy == "block":
        return block_mask(observed, rate, generator)
    choices = [random_mask(observed, rate, generator), block_mask(observed, rate, generator)]
    if context is not None:
        choices.append(forecast)
    pick = torch.randint(len(choices), (w,), generator=generator, device=observed.device)
    return torch.stack(choices)[pick, torch.arange(w, device=observed.device)]
