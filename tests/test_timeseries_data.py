"""Time series from CSV: reading ETT and refusing bad files by name, the standard splits, a
standardizer that sees only the training rows, windows that never leak across split borders, and
CSDI's missing-value masks."""

from datetime import datetime, timedelta

import numpy as np
import pytest
import torch

from difflab.data.dataset import shared_folder
from difflab.data.normalization import Normalizer
from difflab.data.timeseries import (
    ETT_COLUMNS,
    TimeSeries,
    block_mask,
    fit_standardizer,
    forecast_windows,
    history_mask,
    random_mask,
    split,
    training_mask,
    windows,
)


@pytest.fixture(scope="module")
def etth1() -> TimeSeries:
    try:
        folder = shared_folder("ett")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return TimeSeries.read_csv(folder / "ETTh1.csv")


def row_series(n: int, columns=("a", "b"), step=timedelta(hours=1)) -> TimeSeries:
    """Row r, column k holds 10 r + k; dates every ``step`` from 2016-07-01."""
    rows = torch.arange(n, dtype=torch.float64)[:, None]
    first = datetime(2016, 7, 1)
    return TimeSeries(
        values=10 * rows + torch.arange(len(columns)),
        observed=torch.ones(n, len(columns), dtype=torch.bool),
        columns=tuple(columns),
        dates=tuple(str(first + r * step) for r in range(n)),
    )


def write(tmp_path, text: str):
    path = tmp_path / "series.csv"
    path.write_text(text)
    return path


# ---------------------------------------------------------------------- reading


def test_read_ett(etth1):
    assert etth1.columns == ETT_COLUMNS and etth1.length == 17420 and etth1.dim == 7
    assert etth1.dates[0] == "2016-07-01 00:00:00" and etth1.dates[1] == "2016-07-01 01:00:00"
    assert etth1.values.dtype == torch.float64 and bool(etth1.observed.all())
    assert float(etth1.values[0, 0]) == 5.827000141143799  # HUFL of the first row, exactly
    assert float(etth1.values[1, 6]) == 27.78700065612793  # OT of the second
    ot = etth1.select("OT")
    assert ot.columns == ("OT",) and torch.equal(ot.values[:, 0], etth1.values[:, 6])
    assert etth1.select(["OT", "HUFL"]).values[0].tolist() == [30.5310001373291, 5.827000141143799]


def test_missing_cells_are_unobserved_and_dates_optional(tmp_path):
    path = write(tmp_path, "x,y\n1.5,\n, 2\nnan,NaN\n4,5e-1\n")
    s = TimeSeries.read_csv(path)  # no "date" column: dates are row numbers
    assert s.dates == ("0", "1", "2", "3") and s.columns == ("x", "y")
    assert s.observed.tolist() == [[True, False], [False, True], [False, False], [True, True]]
    assert s.values.tolist() == [[1.5, 0.0], [0.0, 2.0], [0.0, 0.0], [4.0, 0.5]]
    timed = TimeSeries.read_csv(write(tmp_path, "t,y\n2020,1\n2021,2\n"), date_column="t")
    assert timed.dates == ("2020", "2021") and timed.columns == ("y",)


def test_bad_files_are_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.csv does not exist"):
        TimeSeries.read_csv(tmp_path / "nowhere.csv")
    with pytest.raises(ValueError, match="no numeric columns"):
        TimeSeries.read_csv(write(tmp_path, "date\n2020-01-01\n"))
    with pytest.raises(ValueError, match=r"line 3 \(data row 1\), column 'y': 'abc' is not a"):
        TimeSeries.read_csv(write(tmp_path, "date,x,y\nd0,1,2\nd1,3,abc\n"))
    with pytest.raises(ValueError, match="column 'x': 'inf' is not a finite number"):
        TimeSeries.read_csv(write(tmp_path, "x\n1\ninf\n"))
    with pytest.raises(ValueError, match="line 3: 1 cells, the header has 2"):
        TimeSeries.read_csv(write(tmp_path, "x,y\n1,2\n3\n"))
    with pytest.raises(ValueError, match=r"unknown column 'OTT'\. Did you mean 'OT'"):
        TimeSeries.read_csv(write(tmp_path, "date,OT,HUFL\nd,1,2\n"), columns=["OTT"])


def test_direct_construction_refuses_nan_where_observed():
    with pytest.raises(ValueError, match="NaN or inf where observed"):
        TimeSeries(torch.tensor([[float("nan")]]), torch.tensor([[True]]), ("x",), ("0",))
    s = TimeSeries(
        torch.tensor([[float("nan")], [1.0]]), torch.tensor([[False], [True]]), ("x",), ("0", "1")
    )
    assert s.values.tolist() == [[0.0], [1.0]]  # missing entries hold 0.0, never NaN


# ---------------------------------------------------------------------- splits


def test_ett_split_sizes(etth1):
    train, val, test = split(etth1)  # auto: ETT columns and >= 14400 rows
    assert (train.start, train.length) == (0, 8640)
    assert (val.start, val.length) == (8640, 2880)
    assert (test.start, test.length) == (11520, 2880)
    assert torch.equal(test.values, etth1.values[11520:14400])
    assert split(etth1.select("OT")).test.length == 2880  # one ETT column is still ETT


def test_split_kinds():
    hourly = row_series(14400, ETT_COLUMNS[:2])
    assert [p.length for p in split(hourly, "auto")] == [8640, 2880, 2880]
    minute = row_series(57600, ("OT",), step=timedelta(minutes=15))
    assert [p.length for p in split(minute)] == [34560, 11520, 11520]
    short = row_series(1000, ETT_COLUMNS[:2])  # too short for ETT's split: fractions
    assert [p.length for p in split(short)] == [700, 100, 200]
    assert [p.start for p in split(row_series(1001))] == [0, 700, 801]  # int(0.7 n), int(0.2 n)
    with pytest.raises(ValueError, match="split 'ett_hour' needs 14400 rows"):
        split(short, "ett_hour")
    with pytest.raises(ValueError, match="unknown split 'ett'"):
        split(short, "ett")


def test_standardizer_sees_only_observed_training_rows():
    g = torch.Generator().manual_seed(0)
    values = (
        torch.randn(200, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.1]) + 3
    )
    observed = torch.rand(200, 3, generator=g) < 0.8
    series = TimeSeries(values, observed, ("a", "b", "c"), tuple(map(str, range(200))))
    train, _, test = split(series, "fractions")
    norm = fit_standardizer(train)
    assert isinstance(norm, Normalizer) and norm.mode == "meanstd"
    masked = np.where(observed[:140].numpy(), values[:140].numpy(), np.nan)
    np.testing.assert_allclose(norm.mean.numpy(), np.nanmean(masked, 0), rtol=1e-6)
    np.testing.assert_allclose(norm.std.numpy(), np.nanstd(masked, 0), rtol=1e-6)
    changed = values.clone()
    changed[160:] += 1000  # test rows only
    again = fit_standardizer(
        split(TimeSeries(changed, observed, series.columns, series.dates)).train
    )
    assert torch.equal(again.mean, norm.mean) and torch.equal(again.std, norm.std)
    x = test.values
    torch.testing.assert_close(norm.unnormalize(norm(x)), x, rtol=1e-12, atol=1e-12)
    y = norm(train.values)[train.observed[:, 0], 0]
    assert float(y.mean()) == pytest.approx(0.0, abs=1e-5) and float(
        y.std(correction=0)
    ) == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------------- windows


def test_windows_hold_the_rows_they_name():
    s = row_series(50).rows(10, 50)  # file rows 10..49
    w = windows(s, length=8, stride=3)
    assert w.values.shape == (11, 8, 2) and w.starts.tolist() == list(range(10, 41, 3))
    for start, window in zip(w.starts.tolist(), w.values):
        assert window[:, 0].tolist() == [10.0 * r for r in range(start, start + 8)]
    with pytest.raises(ValueError, match="window length 41 is longer than the 40 rows"):
        windows(s, 41)


def test_training_windows_stay_inside_the_training_rows():
    train = split(row_series(1000)).train
    w = windows(train, length=24)
    assert int(w.starts.max()) + 24 == train.end and int(w.starts.min()) == 0
    assert float(w.values[..., 0].max()) == 10.0 * (train.end - 1)  # never a validation row


def test_forecast_windows_stay_inside_the_split(etth1):
    _, val, test = split(etth1)
    context, horizon = 96, 96
    w = forecast_windows(val, test, context, horizon, stride=1)
    assert len(w.starts) == 2785  # Informer's test set: 2880 + 96 - 192 + 1 windows
    horizon_rows = w.starts[:, None] + context + torch.arange(horizon)
    assert int(horizon_rows.min()) == test.start and int(horizon_rows.max()) == test.end - 1
    assert int(w.starts.min()) == test.start - context  # the context reaches into val
    index = w.starts[:, None] + torch.arange(context + horizon)
    assert torch.equal(w.values, etth1.values[index])  # the rows the starts name, none past the end


def test_forecast_windows_refusals():
    train, val, test = split(row_series(1000))
    w = forecast_windows(val, test, context=150, horizon=20, stride=5)  # val has only 100 rows
    assert int(w.starts[0]) == val.start and bool((w.starts + 150 >= test.start).all())
    assert int(w.starts[-1]) + 170 <= test.end
    with pytest.raises(ValueError, match="must end where it starts"):
        forecast_windows(train, test, 10, 10, 1)
    short = test.rows(0, 30)
    with pytest.raises(ValueError, match="horizon 96 \\+ context 96 is longer than the 126 rows"):
        forecast_windows(val, short, 96, 96, 1)


# ---------------------------------------------------------------------- masks


def observed_batch(w=16, length=40, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(w, length, k, generator=g) < 0.9


def test_random_mask_hides_the_rate_of_observed_entries():
    observed = observed_batch()
    rate = torch.linspace(0, 1, 16)
    cond = random_mask(observed, rate, torch.Generator().manual_seed(1))
    assert cond.dtype == torch.bool and not bool((cond & ~observed).any())
    hidden = (observed & ~cond).sum((1, 2))
    assert hidden.tolist() == torch.round(rate * observed.sum((1, 2))).long().tolist()
    again = random_mask(observed, rate, torch.Generator().manual_seed(1))
    assert torch.equal(cond, again)
    assert not torch.equal(cond, random_mask(observed, rate, torch.Generator().manual_seed(2)))
    half = random_mask(observed, 0.5, torch.Generator().manual_seed(3))
    assert (observed & ~half).sum((1, 2)).tolist() == torch.round(
        0.5 * observed.sum((1, 2))
    ).long().tolist()


def test_block_mask_hides_contiguous_blocks():
    observed = torch.ones(32, 60, 2, dtype=torch.bool)
    cond = block_mask(observed, 0.3, torch.Generator().manual_seed(4), block=(5, 10))
    assert torch.equal(
        cond, block_mask(observed, 0.3, torch.Generator().manual_seed(4), block=(5, 10))
    )
    hidden = (~cond).sum(1)  # per window and column
    assert bool((hidden >= 18).all()) and bool(
        (hidden < 18 + 10).all()
    )  # 0.3 of 60, one block over
    for run in (~cond).permute(0, 2, 1).reshape(-1, 60).int():
        edges = torch.diff(torch.cat([torch.zeros(1), run, torch.zeros(1)]))
        begins, ends = (edges == 1).nonzero()[:, 0], (edges == -1).nonzero()[:, 0]
        lengths = (ends - begins)[ends < 60]  # a block cut by the window's end may be short
        assert bool((lengths >= 5).all())
    sparse = observed_batch(8, 60, 2)
    cond = block_mask(sparse, 1.0, torch.Generator().manual_seed(5))
    assert not bool(cond.any())  # rate 1 hides every observed entry


def test_history_mask_is_exact():
    observed = observed_batch()
    cond = history_mask(observed, 12)
    assert torch.equal(cond[:, :12], observed[:, :12]) and not bool(cond[:, 12:].any())
    with pytest.raises(ValueError, match="context must be in"):
        history_mask(observed, 40)


def test_training_masks():
    observed = observed_batch(64)
    g = lambda: torch.Generator().manual_seed(6)  # noqa: E731
    assert torch.equal(
        training_mask(observed, "forecast", g(), context=20), history_mask(observed, 20)
    )
    for strategy in ("random", "block", "mix"):
        cond = training_mask(observed, strategy, g(), context=20)
        assert torch.equal(cond, training_mask(observed, strategy, g(), context=20))
        assert not bool((cond & ~observed).any())
        fraction = cond.sum() / observed.sum()
        assert 0.3 < float(fraction) < 0.7  # rate ~ U(0, 1): about half given
    mixed = training_mask(observed, "mix", g(), context=20)
    forecast_rows = (mixed == history_mask(observed, 20)).flatten(1).all(1)
    assert 5 < int(forecast_rows.sum()) < 40  # about a third of the windows forecast
    with pytest.raises(ValueError, match="needs context"):
        training_mask(observed, "forecast", g())
    with pytest.raises(ValueError, match="unknown mask strategy 'rand'"):
        training_mask(observed, "rand", g())
