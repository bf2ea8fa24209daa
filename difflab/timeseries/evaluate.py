"""Probabilistic forecasting and imputation scores on a CSV's test split, for a diffusion model and
the baselines side by side: ``evaluate(model, "ETTh1.csv", "forecast", samples=50)``.

Forecasting: windows of context + horizon steps whose horizon lies in the test split (the context
may reach into the validation rows before it, Informer's border; Zhou et al. 2021), every
``stride``-th. Imputation: non-overlapping windows of the model's length inside the test split, a
fraction ``missing`` of each window's observed entries hidden at random (seeded) and scored.
Everything is scored on data standardized by the training split's statistics (the long-horizon
papers' convention): CRPS (the samples' exact energy form, and CSDI's quantile form), CRPS-sum,
MSE / MAE of the median and the coverage of the 50 % / 90 % central intervals
(:func:`difflab.metrics.forecast.forecast_metrics`). Baselines, fitted on the same training split:
seasonal naive, DLinear and a Gaussian linear forecaster; linear interpolation and the column mean.
With ``guidance`` (e.g. {"loss": "quantile", "scale": 4.0}) an unconditional model samples by
observation self-guidance instead (:func:`difflab.timeseries.guidance.self_guided_sample`).
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from difflab.data.timeseries import (
    Splits,
    TimeSeries,
    forecast_windows,
    random_mask,
    split,
    windows,
)
from difflab.metrics.forecast import forecast_metrics
from difflab.timeseries.baselines import (
    FORECAST_BASELINES,
    IMPUTE_BASELINES,
    fit,
    forecast_baseline,
    impute_baseline,
)
from difflab.timeseries.guidance import GUIDED_STEPS, self_guided_sample
from difflab.timeseries.model import TimeSeriesModel

__all__ = ["TASKS", "Problem", "evaluate", "problem", "read_splits"]

TASKS = ("forecast", "impute")


class Problem:
    """The scored windows of a test split: ``values`` [W, L, K] (standardized), ``given`` (what a
    method sees) and ``target`` (what is scored), bool [W, L, K]."""

    def __init__(self, values: Tensor, given: Tensor, target: Tensor, starts: Tensor) -> None:
        self.values, self.given, self.target, self.starts = values, given, target, starts


def read_splits(model: TimeSeriesModel, data: str | os.PathLike[str] | TimeSeries) -> Splits:
    """The model's columns of ``data`` (a CSV path or a series), split as the model was trained."""
    series = data
    if not isinstance(series, TimeSeries):
        series = TimeSeries.read_csv(data, model.data["date_column"] or None)
    missing = [c for c in model.columns if c not in series.columns]
    if missing:
        raise ValueError(
            f"the data lack the model's column(s) {', '.join(missing)} (it has {', '.join(series.columns)})"
        )
    return split(series.select(list(model.columns)), model.data["split"])


def problem(
    model: TimeSeriesModel,
    splits: Splits,
    task: str,
    *,
    horizon: int | None = None,
    missing: float = 0.5,
    stride: int | None = None,
    seed: int = 0,
) -> Problem:
    """The test windows of ``task`` (module docstring), standardized by the model's statistics."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    context, trained = model.window["context"], model.window["horizon"]
    if task == "forecast":
        horizon = trained if horizon is None else int(horizon)
        if not 1 <= horizon <= trained:
            raise ValueError(
                f"the model forecasts 1 to {trained} steps after {context} (its window), got "
                f"horizon {horizon}"
            )
        if context < 1:
            raise ValueError(
                "this model has no context steps: it cannot forecast (train it with model.context >= 1)"
            )
        w = forecast_windows(splits.val, splits.test, context, horizon, stride or horizon)
        given = torch.zeros_like(w.observed)
        given[:, :context] = w.observed[:, :context]
        target = w.observed & ~given
    else:
        if not 0 < missing < 1:
            raise ValueError(f"missing must be a fraction in (0, 1), got {missing}")
        w = windows(splits.test, model.length, stride or model.length)
        given = random_mask(w.observed, missing, torch.Generator().manual_seed(seed))
        target = w.observed & ~given
    values = model.standardizer(w.values).to(torch.float64)
    return Problem(torch.where(w.observed, values, 0.0), given, target, w.starts)


def _forecasters(model: TimeSeriesModel, splits: Splits, horizon: int, seed: int) -> dict[str, Any]:
    """The forecasting baselines, the linear ones fitted on the standardized training split (early
    stopping on the validation split)."""
    standard = {name: model.standardizer(s.values).double() for name, s in splits._asdict().items()}
    out = {}
    for name in FORECAST_BASELINES:
        baseline = forecast_baseline(name, model.window["context"], horizon)
        if isinstance(baseline, torch.nn.Module):
            g = torch.Generator().manual_seed(seed)
            baseline = fit(baseline.double(), standard["train"], standard["val"], generator=g)
        out[name] = baseline
    return out


def evaluate(
    model: TimeSeriesModel,
    data: str | os.PathLike[str] | TimeSeries,
    task: str,
    *,
    horizon: int | None = None,
    missing: float = 0.5,
    samples: int = 50,
    stride: int | None = None,
    seed: int = 0,
    baselines: bool = True,
    batch_windows: int = 8,
    progress: bool = False,
    guidance: dict[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Scores of ``model`` (``samples`` paths per window, sampler ``options``; self-guided with
    ``guidance``'s loss and scale when given) and of the baselines on the test split (module
    docstring): {"crps", "crps_quantile", "crps_sum", "mse", "mae", "coverage_50", "coverage_90",
    "windows", "nfe", "seconds", "baselines": {name: scores}} (and "guidance")."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    splits = read_splits(model, data)
    p = problem(model, splits, task, horizon=horizon, missing=missing, stride=stride, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    start, paths = time.perf_counter(), []
    values = model.standardizer.unnormalize(p.values.float()).double()
    chunks = range(0, len(p.values), batch_windows)
    for i in tqdm(chunks, desc="windows", unit="batch", disable=not progress, leave=False):
        part = slice(i, i + batch_windows)
        window = values[part], p.given[part]
        if task == "forecast":  # pad a shorter horizon to the model's window
            pad = model.length - window[0].shape[1]
            window = tuple(torch.nn.functional.pad(v, (0, 0, 0, pad)) for v in window)
        if guidance is None:
            out = model.sample(*window, samples, generator=generator, **options)
        else:
            out = self_guided_sample(
                model, *window, samples, generator=generator, **guidance, **options
            )
        paths.append(out[:, :, : p.values.shape[1]])
    seconds = time.perf_counter() - start
    sampler, steps = options.get("sampler"), options.get("steps")
    if guidance is not None:  # self-guidance's defaults: TSDiff's DDPM steps
        sampler, steps = sampler or "ddpm", steps or GUIDED_STEPS
    paths = model.standardizer(torch.cat(paths, dim=1).float()).double()
    result: dict[str, Any] = {
        "task": task,
        "windows": len(p.values),
        "samples": samples,
        "nfe": model.nfe(sampler, steps),
        "seconds": seconds,
        **forecast_metrics(paths, p.values, p.target),
    }
    if guidance is not None:
        result["guidance"] = dict(guidance)
    if task == "forecast":
        result["horizon"] = p.values.shape[1] - model.window["context"]
    else:
        result["missing"] = missing
    if baselines:
        result["baselines"] = _baselines(model, splits, p, task, seed, samples)
    return result


def _baselines(
    model: TimeSeriesModel, splits: Splits, p: Problem, task: str, seed: int, samples: int
) -> dict[str, dict[str, float]]:
    """Each baseline's scores on the same windows and targets (``samples`` paths when it samples)."""
    scores = {}
    if task == "forecast":
        context = model.window["context"]
        horizon = p.values.shape[1] - context
        history = p.values[:, :context]
        target = p.target[:, context:]
        for name, baseline in _forecasters(model, splits, horizon, seed).items():
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                paths = baseline.forecast(history, horizon, samples=samples, generator=g)
            scores[name] = forecast_metrics(paths.double(), p.values[:, context:], target)
    else:
        for name in IMPUTE_BASELINES:
            paths = impute_baseline(name)(p.values, p.given)
            scores[name] = forecast_metrics(paths.double(), p.values, p.target)
    return scores
