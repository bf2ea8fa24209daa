"""`difflab ts train / eval / sample` on a tiny synthetic CSV and a 3-step model: the model folder,
the --json scores beside the baselines, the fan chart, and one-line errors (exit status 2)."""

import json
import math
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch
from PIL import Image

import difflab.pretrained
from difflab.cli import main
from difflab.timeseries import TimeSeriesModel

ROWS, CONTEXT, HORIZON = 400, 24, 12
KEYS = {"crps", "crps_sum", "mse", "mae", "coverage_90"}
TINY = [
    "data.split=fractions",
    f"model.context={CONTEXT}",
    f"model.horizon={HORIZON}",
    "model.channels=8",
    "model.layers=1",
    "model.heads=2",
    "model.patch=4",
    "optim.batch_size=8",
    "optim.warmup=0",
    "run.steps=3",
    "run.threads=1",
]


def write_csv(path, rows=ROWS, columns=("a", "b", "c"), dates=True):
    """Hourly rows of daily sinusoids plus noise, one column per name (seeded)."""
    g = torch.Generator().manual_seed(0)
    t = torch.arange(rows, dtype=torch.float64)
    values = [
        torch.sin(2 * math.pi * (t + 5 * i) / 24) * (i + 1) + 0.1 * torch.randn(rows, generator=g)
        for i in range(len(columns))
    ]
    start = datetime(2020, 1, 1)
    header = (["date"] if dates else []) + list(columns)
    lines = [",".join(header)]
    for r in range(rows):
        cells = [f"{float(v[r]):.5f}" for v in values]
        if dates:
            cells.insert(0, (start + timedelta(hours=r)).isoformat(sep=" "))
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("difflab ts: error: ") and "\n" not in err, err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run folder, CSV) of a 3-step `difflab ts train` on the synthetic CSV."""
    root = tmp_path_factory.mktemp("ts")
    csv = write_csv(root / "small.csv")
    run = root / "run"
    args = ["ts", "train", "--config", "configs/ts_ett.toml", "--run-dir", str(run)]
    assert main([*args, f"data.path={csv}", *TINY]) == 0
    return run, csv


def test_train_writes_a_model_that_loads(trained, capsys):
    run, _ = trained
    model = TimeSeriesModel.load(run / "model")
    assert model.columns == ("a", "b", "c") and model.window == {"context": 24, "horizon": 12}
    assert model.data == {"date_column": "date", "split": "fractions"}
    assert model.config["training"]["steps"] == 3
    assert TimeSeriesModel.load(run).config == model.config  # the run folder loads too
    paths = model.forecast(torch.randn(2, CONTEXT, 3), 3, steps=2)
    assert paths.shape == (3, 2, HORIZON, 3) and bool(paths.isfinite().all())


@pytest.mark.parametrize(
    ("task", "extra", "baselines"),
    [
        ("forecast", [], {"seasonal_naive", "dlinear"}),
        ("impute", ["--missing", "0.5"], {"linear_interpolation", "column_mean"}),
    ],
)
def test_eval_writes_scores_beside_the_baselines(trained, tmp_path, capsys, task, extra, baselines):
    run, csv = trained
    out = tmp_path / "scores.json"
    args = ["--model", str(run), "--data", str(csv), "--task", task, "--samples", "4"]
    assert main(["ts", "eval", *args, "--steps", "2", *extra, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(result) >= KEYS and result["task"] == task and result["samples"] == 4
    assert result["windows"] >= 1 and result["nfe"] == 2  # dpmpp_2m (the default), 2 steps
    assert baselines <= set(result["baselines"])
    for name, scores in {"diffusion": result, **result["baselines"]}.items():
        assert set(scores) >= KEYS, name
        assert all(math.isfinite(scores[k]) for k in KEYS), name
        assert 0 <= scores["coverage_90"] <= 1 and scores["crps"] >= 0, name
        assert name in printed
    if task == "impute":
        assert result["missing"] == 0.5
        # the column mean of standardized data is 0: its MSE is the targets' mean square, about 1
        assert 0.3 < result["baselines"]["column_mean"]["mse"] < 3
    else:
        assert result["horizon"] == HORIZON
        # a daily sinusoid with little noise: the seasonal naive forecast is nearly exact
        assert result["baselines"]["seasonal_naive"]["mse"] < 0.1


def test_sample_writes_a_fan_chart(trained, tmp_path, capsys):
    run, csv = trained
    out = tmp_path / "forecast.png"
    args = ["--model", str(run), "--data", str(csv), "--start", "300", "--samples", "8"]
    assert main(["ts", "sample", *args, "--steps", "2", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 3 * 100


def test_bad_input_is_one_line(trained, tmp_path, capsys):
    """Each bad input: exit status 2, one line on stderr that names the problem, nothing written."""
    run, csv = trained
    no_numbers = tmp_path / "dates.csv"
    no_numbers.write_text("date\n2020-01-01 00:00:00\n2020-01-01 01:00:00\n")
    short = write_csv(tmp_path / "short.csv", rows=60)
    other = Path(difflab.pretrained.__file__).parent / "mnist"  # a shipped diffusion model
    out = str(tmp_path / "out.json")
    evaluate = ["ts", "eval", "--model", str(run), "--task", "forecast", "--samples", "2"]
    sample = [
        "ts",
        "sample",
        "--model",
        str(run),
        "--data",
        str(csv),
        "--out",
        str(tmp_path / "f.png"),
    ]
    cases = [
        ([*evaluate, "--data", str(no_numbers), "--json", out], "no numeric columns"),
        ([*evaluate, "--data", str(csv), "--horizon", "13"], "forecasts 1 to 12 steps"),
        ([*evaluate, "--data", str(short), "--json", out], "is longer than the 18 rows"),
        ([*sample, "--start", "10"], "--start must be a row in [24, 399]"),
        ([*sample, "--start", "400"], "--start must be a row in [24, 399]"),
        ([*evaluate, "--data", str(tmp_path / "missing.csv")], "does not exist"),
        (
            [*evaluate[:3], str(other), *evaluate[4:], "--data", str(csv)],
            "holds a diffusion model, not a timeseries model",
        ),
        (
            [*evaluate[:3], str(tmp_path / "nothing"), *evaluate[4:], "--data", str(csv)],
            "does not exist",
        ),
        ([*evaluate, "--data", str(csv), "--task", "impute", "--missing", "1.5"], "--missing"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        assert message in one_line_error(capsys), (args, message)
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "f.png").exists()


def test_train_on_a_csv_without_numbers_is_one_line(tmp_path, capsys):
    csv = tmp_path / "dates.csv"
    csv.write_text("date\n2020-01-01 00:00:00\n2020-01-01 01:00:00\n")
    args = ["ts", "train", "--config", "configs/ts_ett.toml", "--run-dir", str(tmp_path / "run")]
    assert main([*args, f"data.path={csv}", *TINY]) == 2
    assert "no numeric columns" in one_line_error(capsys)
