"""`difflab ts ...`: time-series diffusion models: train one on a CSV (`train`), score its forecasts or
imputations on the test split beside the baselines (`eval`), plot a forecast (`sample`).

Each subcommand is one ``add_NAME(sub)`` function in :data:`SUBCOMMANDS` that adds its parser and
sets ``run`` to its handler.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from difflab.cli.common import (
    CliError,
    add_run_arguments,
    check_output,
    positive,
    run_training,
    user_errors,
)

__all__ = ["SUBCOMMANDS", "add", "add_eval", "add_sample", "add_train"]

KEYS = ("crps", "crps_sum", "mse", "mae", "coverage_90")


def add_train(sub: Any) -> None:
    t = sub.add_parser(
        "train",
        help="train a time-series diffusion model on a CSV",
        description="Train a CSDI-style conditional denoiser on the training split of a CSV of "
        "time-indexed columns (configs/ts_ett.toml), with section.key=value overrides: data.path "
        "the CSV, data.target all | a column such as OT, data.task forecast | impute | both "
        "(or unconditional: no given entries, a model for `ts eval --self-guidance`), "
        "model.context / model.horizon the window, run.steps the budget. Columns are standardized "
        "by the training split (saved with the model). The run folder gets checkpoints/ (a rerun "
        "resumes), metrics.jsonl and, at the end, model/: `difflab ts eval --model DIR` loads it.",
        epilog="Example: difflab ts train --config configs/ts_ett.toml "
        "data.path=../shared/data/ett/ETTh1.csv data.task=forecast model.horizon=96 run.steps=4000",
    )
    add_run_arguments(t, "time-series training")
    t.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> None:
    from difflab.timeseries import TimeSeriesTask
    from difflab.training.loop import run

    def train(config: str, overrides: list[str], run_dir: str | None, resume: bool) -> Any:
        return run(TimeSeriesTask(), config, overrides, run_dir, resume)

    run_training(args, train)


def _sampler_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", default=None, help="any difflab sampler (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--schedule", default=None, help="step grid (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _sampler_options(args: argparse.Namespace) -> dict[str, Any]:
    positive(args.steps, "--steps")
    positive(args.seed, "--seed", minimum=0)
    return {k: getattr(args, k) for k in ("sampler", "steps", "schedule") if getattr(args, k)}


def add_eval(sub: Any) -> None:
    e = sub.add_parser(
        "eval",
        help="CRPS, CRPS-sum, MSE / MAE and coverage on the test split, beside the baselines",
        description="Score a model on the test split of --data (split as it was trained): "
        "forecasting (windows whose --horizon steps lie in the test split, every --stride-th) or "
        "imputation (non-overlapping windows, a --missing fraction of the observed entries hidden "
        "at random). Scores on standardized data: CRPS (exact, of the samples), CRPS-sum, MSE and "
        "MAE of the median, coverage of the 90 %% interval; the same for the baselines (seasonal "
        "naive, DLinear, a Gaussian linear model; linear interpolation, column mean). --json "
        "writes crps, crps_sum, mse, mae, coverage_90 and baselines: {name: the same keys}.",
        epilog="Example: difflab ts eval --model runs/ts_ett --data ../shared/data/ett/ETTh1.csv "
        "--task forecast --horizon 96 --samples 50 --json forecast.json",
    )
    e.add_argument("--model", required=True, help="a time-series model folder or its run folder")
    e.add_argument("--data", required=True, help="the CSV (the model's columns, date column)")
    e.add_argument("--task", required=True, choices=("forecast", "impute"))
    e.add_argument(
        "--horizon", type=int, default=None, help="steps forecast (default: the model's)"
    )
    e.add_argument("--missing", type=float, default=0.5, help="fraction hidden (impute; 0.5)")
    e.add_argument("--samples", type=int, default=50, help="sample paths per window (default 50)")
    e.add_argument(
        "--stride", type=int, default=None, help="rows between windows (default: no overlap)"
    )
    e.add_argument("--no-baselines", action="store_true", help="score the model only")
    e.add_argument(
        "--self-guidance",
        choices=("mse", "quantile"),
        default=None,
        help="sample an unconditional model (data.task=unconditional) by TSDiff's observation "
        "self-guidance with this loss (default sampler ddpm, 50 steps)",
    )
    e.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="the self-guidance scale s (default: 1 for mse, 4 for quantile)",
    )
    _sampler_arguments(e)
    e.add_argument("--json", default=None, help="write the scores to this .json file")
    e.set_defaults(run=run_eval)


def _load(path: str) -> Any:
    from difflab.pretrained.catalog import load_timeseries

    with user_errors():
        return load_timeseries(path)


def run_eval(args: argparse.Namespace) -> None:
    import json

    from difflab.timeseries import evaluate
    from difflab.utils.files import atomic_write_bytes

    positive(args.samples, "--samples")
    positive(args.horizon, "--horizon")
    positive(args.stride, "--stride")
    if not 0 < args.missing < 1:
        raise CliError(f"--missing must be a fraction in (0, 1), got {args.missing}")
    options = _sampler_options(args)
    guidance = None
    if args.self_guidance is not None:
        guidance = {"loss": args.self_guidance, "scale": args.guidance_scale}
        if args.guidance_scale is not None and not args.guidance_scale >= 0:
            raise CliError(f"--guidance-scale must be >= 0, got {args.guidance_scale}")
    elif args.guidance_scale is not None:
        raise CliError("--guidance-scale needs --self-guidance mse|quantile")
    out = check_output(args.json, (".json",), "--json") if args.json else None
    model = _load(args.model)
    with user_errors():
        result = evaluate(
            model,
            args.data,
            args.task,
            horizon=args.horizon,
            missing=args.missing,
            samples=args.samples,
            stride=args.stride,
            seed=args.seed,
            baselines=not args.no_baselines,
            progress=True,
            guidance=guidance,
            **options,
        )
    label = "diffusion" if guidance is None else f"self-guided ({args.self_guidance})"
    rows = {label: result, **result.get("baselines", {})}
    what = f"horizon {result['horizon']}" if args.task == "forecast" else f"missing {args.missing}"
    print(
        f"{args.task}, {what}: {result['windows']} test windows, {args.samples} samples, "
        f"{result['nfe']} NFE, {result['seconds']:.1f} s"
    )
    print(f"{'method':<22}" + "".join(f"{k:>13}" for k in KEYS))
    for name, scores in rows.items():
        print(f"{name:<22}" + "".join(f"{scores[k]:>13.4f}" for k in KEYS))
    if out is not None:
        atomic_write_bytes(out, (json.dumps(result, indent=2) + "\n").encode())
        print(f"wrote {out}")


def add_sample(sub: Any) -> None:
    s = sub.add_parser(
        "sample",
        help="plot a forecast: context, truth, median and 50 / 90 %% bands per column",
        description="Forecast the model's horizon from row --start of --data (the model's context "
        "steps before it are given) with --samples paths, and write a PNG: per column the "
        "context, the truth (where the file has it), the median and the 50 %% / 90 %% bands.",
        epilog="Example: difflab ts sample --model runs/ts_ett --data ../shared/data/ett/ETTh1.csv "
        "--start 12000 --out forecast.png",
    )
    s.add_argument("--model", required=True, help="a time-series model folder or its run folder")
    s.add_argument("--data", required=True, help="the CSV (the model's columns, date column)")
    s.add_argument("--start", type=int, required=True, help="file row of the first forecast step")
    s.add_argument("--samples", type=int, default=100, help="sample paths (default 100)")
    _sampler_arguments(s)
    s.add_argument("--out", required=True, help="the .png to write")
    s.set_defaults(run=run_sample)


def run_sample(args: argparse.Namespace) -> None:
    import torch

    from difflab.data.timeseries import TimeSeries
    from difflab.timeseries.plot import plot_forecast

    positive(args.samples, "--samples")
    options = _sampler_options(args)
    out = check_output(args.out, (".png",))
    model = _load(args.model)
    c, h = model.window["context"], model.window["horizon"]
    with user_errors():
        series = TimeSeries.read_csv(args.data, model.data["date_column"] or None)
        series = series.select(list(model.columns))
        if not c <= args.start < series.length:
            raise ValueError(
                f"--start must be a row in [{c}, {series.length - 1}] (the model's {c} context "
                f"steps come before it), got {args.start}"
            )
        history = series.rows(args.start - c, args.start)
        if not bool(history.observed.all()):
            raise ValueError(
                f"the {c} context rows before --start {args.start} have missing values"
            )
        g = torch.Generator().manual_seed(args.seed)
        paths = model.forecast(history.values[None], args.samples, generator=g, **options)[:, 0]
        end = min(args.start + h, series.length)
        truth = series.values[args.start : end] if end - args.start == h else None
        title = f"{series.dates[args.start]}: {h} steps after {c}, {args.samples} samples"
        plot_forecast(history.values, paths, out, truth=truth, columns=model.columns, title=title)
    print(f"wrote {out}")


SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (add_train, add_eval, add_sample)


def add(commands: Any) -> None:
    p = commands.add_parser(
        "ts",
        help="time series: probabilistic forecasting and imputation with diffusion",
        description="Time-series diffusion models (CSDI-style, Tashiro et al. 2021) on CSV files "
        "of time-indexed columns such as the ETT benchmark: train, evaluate against the usual "
        "baselines, plot forecasts.",
        epilog="Example: difflab ts train --config configs/ts_ett.toml "
        "data.path=../shared/data/ett/ETTh1.csv",
    )
    sub = p.add_subparsers(dest="ts_command", required=True, metavar="COMMAND")
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(sub)
