"""Time series on ETTh1 (7 columns, the standard 12 / 4 / 4-month split): probabilistic forecasting at
horizons 24 and 96 after a context of 96 steps, and imputation at 10 / 50 / 90 % missing, for the
diffusion model (CSDI-style, `difflab ts train --config configs/ts_ett.toml`) and every baseline side
by side, on the test split, standardized by the training split's statistics.

    .venv/bin/python benchmarks/timeseries.py                   # trains runs/bench_ts unless there
    .venv/bin/python benchmarks/timeseries.py --steps 200 --samples 8 --stride 480   # a quick look

One model trained with task "both" (history, random and block masks) serves every row: a forecast at
horizon 24 is the first 24 steps of its 96. Beside it, "self-guided (unconditional model)": a second
model of the same size trained with task "unconditional" (no given entries, its own run folder)
forecasts and imputes by TSDiff's observation self-guidance (Kollovieh et al. 2023; quantile loss at
s = 4, 50 DDPM steps, each with a backward pass). Scores: CRPS (exact, of the samples), CRPS-sum,
MSE / MAE of the median, coverage of the 90 % interval; point baselines have CRPS = MAE. Baselines
(fitted on the same training split, early-stopped on the validation split): seasonal naive (24 h),
DLinear (Zeng et al. 2023), a Gaussian linear model; linear interpolation and the column mean. Wall
times: training the model, and sampling each row. Writes docs/timeseries_forecast.png (a fan chart
of a test window).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from difflab.data.timeseries import TimeSeries
from difflab.timeseries import TimeSeriesModel, TimeSeriesTask, evaluate, plot_forecast
from difflab.training.loop import run

KEYS = ("crps", "crps_sum", "mse", "mae", "coverage_90")


def trained(args: argparse.Namespace, folder: Path, *extra: str) -> tuple[TimeSeriesModel, float]:
    """A benchmark model (config overrides ``extra``), trained now unless ``folder`` holds it;
    (model, training wall seconds)."""
    timing = folder / "wall_seconds.json"
    if not (folder / "model" / "model.safetensors").is_file():
        start = time.perf_counter()
        overrides = [f"data.path={args.data}", f"run.steps={args.steps}", "run.tensorboard=false"]
        run(TimeSeriesTask(), "configs/ts_ett.toml", [*overrides, *extra], folder, progress=True)
        timing.write_text(json.dumps(time.perf_counter() - start))
    seconds = json.loads(timing.read_text()) if timing.is_file() else math.nan
    return TimeSeriesModel.load(folder), seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("../shared/data/ett/ETTh1.csv"))
    p.add_argument("--run", type=Path, default=Path("runs/bench_ts"))
    p.add_argument("--steps", type=int, default=4000, help="training steps of the model")
    p.add_argument("--samples", type=int, default=50, help="sample paths per window")
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--nfe", type=int, default=20, help="sampler steps (DPM-Solver++(2M): NFE)")
    p.add_argument("--stride", type=int, default=None, help="rows between forecast windows")
    p.add_argument("--run-unconditional", type=Path, default=Path("runs/bench_ts_unconditional"))
    p.add_argument(
        "--guidance",
        choices=("quantile", "mse", "none"),
        default="quantile",
        help="the unconditional model's self-guidance loss (none: leave its rows out)",
    )
    p.add_argument("--guided-nfe", type=int, default=50, help="its DDPM steps")
    p.add_argument("--plot", type=Path, default=Path("docs/timeseries_forecast.png"))
    p.add_argument("--json", type=Path, default=None, help="also write every row here")
    args = p.parse_args()
    model, train_s = trained(args, args.run)
    options = {"sampler": args.sampler, "steps": args.nfe, "samples": args.samples}
    unconditional, unconditional_s = None, math.nan
    if args.guidance != "none":
        unconditional, unconditional_s = trained(
            args, args.run_unconditional, "data.task=unconditional"
        )
    guided = {"guidance": {"loss": args.guidance}, "sampler": "ddpm", "steps": args.guided_nfe}
    samples = {"samples": args.samples}
    guided_name = "self-guided (unconditional model)"
    guided_note = (
        f"; self-guided ({args.guidance}): {args.guided_nfe} DDPM steps, unconditional model "
        f"trained {unconditional_s:.0f} s"
    )
    problems = [("forecast", {"horizon": h, "stride": args.stride}) for h in (24, 96)]
    problems += [("impute", {"missing": m}) for m in (0.1, 0.5, 0.9)]
    print(
        f"ETTh1, 7 columns, test split; diffusion: {model.nfe(args.sampler, args.nfe)} NFE, "
        f"{args.samples} samples; trained {train_s:.0f} s{guided_note if unconditional else ''}\n"
    )
    print(f"| task | method | {' | '.join(KEYS)} | sampling s |")
    print("| --- | --- |" + " --- |" * (len(KEYS) + 1))
    results = []
    for task, setting in problems:
        r = evaluate(model, args.data, task, **setting, **options)
        label = f"forecast {r['horizon']}" if task == "forecast" else f"impute {r['missing']:.0%}"
        rows = {"diffusion": r}
        if unconditional is not None:
            rows[guided_name] = evaluate(
                unconditional, args.data, task, **setting, **guided, **samples, baselines=False
            )
        for name, scores in {**rows, **r["baselines"]}.items():
            cells = " | ".join(f"{scores[k]:.4f}" for k in KEYS)
            seconds = f"{rows[name]['seconds']:.0f}" if name in rows else ""
            print(
                f"| {label} ({r['windows']} windows) | {name} | {cells} | {seconds} |", flush=True
            )
        results.append({"label": label, **r, "self_guided": rows.get(guided_name)})
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    series = TimeSeries.read_csv(args.data).select(list(model.columns))
    c, h = model.window["context"], model.window["horizon"]
    start = 11520 + 480  # a test window (the test split starts at row 11520)
    g = torch.Generator().manual_seed(0)
    history = series.values[start - c : start]
    paths = model.forecast(history[None], 100, generator=g, sampler=args.sampler, steps=args.nfe)
    title = f"ETTh1 {series.dates[start]}: {h} h after {c} h, 100 samples"
    truth = series.values[start : start + h]
    plot_forecast(history, paths[:, 0], args.plot, truth=truth, columns=model.columns, title=title)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
