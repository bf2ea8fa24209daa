"""Training a time-series diffusion model: the time-series task of the one training loop
(:class:`difflab.training.loop.Task`), ``difflab ts train --config configs/ts_ett.toml [key=value]``.

Data: the CSV ``data.path`` (:meth:`TimeSeries.read_csv`), its columns ``data.target`` ("all", one
name such as "OT", or a list), split by ``data.split`` (ETT's 12 / 4 / 4 months, or 0.7 / 0.1 / 0.2);
every window of ``model.context + model.horizon`` steps of the training split, standardized per
column by the training split's statistics (saved with the model). Each batch hides entries by
``masks.strategy`` (CSDI's random / block / history masks, Tashiro et al. 2021; "mix" draws one per
window; "none" gives no entry: the unconditional model p(x0) of TSDiff, Kollovieh et al. 2023, for
:mod:`difflab.timeseries.guidance`, the default of ``data.task = "unconditional"``); the network
sees the rest as given entries [x, m g, m] (with "none" an empty mask, so its given channels stay
zero: ``model.given_input = false`` drops them), and the loss scores the hidden observed entries
only:

    L = lambda(sigma) ||D(x0 + sigma eps (1 - m), sigma | m, g) - x0||^2 over entries observed & ~m

(the given entries carry no noise, as at sampling time, where they keep noise level 0). With
``model.prior = "dlinear"`` (forecasting) a DLinear is fitted first and the network learns the
residual x0 - mu around its forecast mu, seeing the given values themselves (CARD, Han et al. 2022).
Export:
``model/``, the EMA network as a :class:`~difflab.timeseries.model.TimeSeriesModel`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from difflab import models
from difflab.core import processes
from difflab.data.timeseries import (
    MASK_STRATEGIES,
    TimeSeries,
    fit_standardizer,
    split,
    training_mask,
    windows,
)
from difflab.timeseries.baselines import DLinear, fit
from difflab.timeseries.model import SAMPLE_DEFAULTS, TimeSeriesModel, prior_mean
from difflab.training.checkpoint import Checkpoint
from difflab.training.config import LOOP_DEFAULTS, extend
from difflab.training.loop import DataOrder, Task
from difflab.training.objectives import Objective, denoising_loss
from difflab.utils.names import check_name

__all__ = ["DEFAULTS", "STRATEGIES", "TASKS", "TimeSeriesTask", "load_series"]

TASKS = ("forecast", "impute", "both", "unconditional")
_STRATEGY = {"forecast": "forecast", "impute": "mix", "both": "mix", "unconditional": "none"}
STRATEGIES = (*MASK_STRATEGIES, "none")

DEFAULTS: dict[str, dict[str, Any]] = extend(
    LOOP_DEFAULTS,
    {
        "run": {"name": "ts", "steps": 4000, "log_every": 100, "checkpoint_every": 500},
        # path: a CSV with a date column and numeric columns; target: "all", a column or a list;
        # split: auto | ett_hour | ett_minute | fractions; task: forecast | impute | both |
        # unconditional (p(x0) for self-guidance)
        "data": {
            "path": "",
            "date_column": "date",
            "target": "all",
            "split": "auto",
            "task": "forecast",
            "stride": 1,
        },
        # context + horizon steps per window; prior: "none" or "dlinear" (forecasting: diffuse the
        # residual around a DLinear forecast fitted first); the other keys build the network
        "model": {
            "type": "csdi",
            "context": 96,
            "horizon": 96,
            "prior": "none",
            "channels": 64,
            "layers": 4,
            "heads": 8,
            "patch": 8,
        },
        # strategy: "" = the task's (forecast: history masks; impute / both: mix; unconditional:
        # none), or random | block | forecast | mix | none (no given entries)
        "masks": {"strategy": ""},
        "objective": {
            "process": "edm",
            "prediction": "edm",
            "weighting": "edm",
            "noise_levels": "lognormal",
            "sigma_data": 1.0,
        },
        "optim": {"lr": 1e-3, "batch_size": 16, "schedule": "cosine", "warmup": 200},
        "ema": {"kind": "power", "sigma_rel": 0.05},
        "sample": dict(SAMPLE_DEFAULTS),
    },
)
FREE = ("model", "objective")


def load_series(data: dict[str, Any]) -> TimeSeries:
    """The [data] section's series: ``path`` read with its date column, ``target`` columns."""
    if not data["path"]:
        raise ValueError("data.path is empty: name a CSV file (e.g. data.path=ETTh1.csv)")
    series = TimeSeries.read_csv(data["path"], data["date_column"] or None)
    return series.select(data["target"])


class TimeSeriesTask(Task):
    """Train a conditional time-series denoiser on masked windows (module docstring; Tashiro et al.
    2021)."""

    name = "ts"
    cli = ("difflab", "ts", "train")
    defaults = DEFAULTS
    free = FREE

    def build(self) -> nn.Module:
        config = self.trainer.config
        data, network = config["data"], dict(config["model"])
        if data["task"] not in TASKS:
            raise ValueError(f"unknown data.task {data['task']!r}; known: {', '.join(TASKS)}")
        self.window = {
            "context": int(network.pop("context")),
            "horizon": int(network.pop("horizon")),
        }
        prior = network.pop("prior")
        if self.window["context"] < 0 or self.window["horizon"] < 1:
            raise ValueError(
                f"model.context must be >= 0 and model.horizon >= 1, got {self.window}"
            )
        self.series = load_series(data)
        self.splits = split(self.series, data["split"])
        self.standardizer = fit_standardizer(self.splits.train)
        length = self.window["context"] + self.window["horizon"]
        train = windows(self.splits.train, length, int(data["stride"]))
        self.values = self.standardizer(train.values.float())
        self.observed = train.observed
        self.strategy = config["masks"]["strategy"] or _STRATEGY[data["task"]]
        check_name("masks.strategy", self.strategy, STRATEGIES)
        self.prior = self._fit_prior(prior, data["task"], config["run"]["seed"])
        objective = dict(config["objective"])
        objective["process"] = processes.get(objective["process"])
        self.objective = Objective(**objective)
        self.order = DataOrder(len(self.values), config["run"]["seed"])
        return models.build({**network, "dim": self.series.dim})

    def _fit_prior(self, kind: str, task: str, seed: int) -> nn.Module | None:
        """The prior forecaster of ``model.prior``: DLinear fitted on the standardized training split
        (early stopping on the validation split, its context reaching back into training rows)."""
        if kind == "none":
            return None
        if kind != "dlinear":
            raise ValueError(f"unknown model.prior {kind!r}; known: none, dlinear")
        if task != "forecast" or self.window["context"] < 1 or self.strategy == "none":
            raise ValueError(
                "model.prior = 'dlinear' forecasts from given context: it needs data.task = "
                "'forecast' and masks that give the context"
            )
        s, c = self.splits, self.window["context"]
        train = self.standardizer(s.train.values).double()
        val = self.standardizer(torch.cat([s.train.values[-c:], s.val.values])).double()
        prior = DLinear(c, self.window["horizon"]).double()
        fit(prior, train, val, generator=torch.Generator().manual_seed(seed))
        return prior.float().requires_grad_(False)

    def batch(self, size: int, generator: torch.Generator) -> dict[str, Tensor]:
        idx = self.order.next(size)
        x0, observed = self.values[idx], self.observed[idx]
        if self.strategy == "none":  # the unconditional model: every observed entry a target
            cond = torch.zeros_like(observed)
        else:
            cond = training_mask(observed, self.strategy, generator, self.window["context"] or None)
        draw = self.objective.draw(x0, None, generator)
        eps = torch.where(cond, 0.0, draw.eps)  # given entries carry no noise
        given = torch.where(cond, x0, 0.0)
        if self.prior is not None:  # the residual around the prior forecast (Han et al. 2022)
            x0 = x0 - prior_mean(self.prior, given, self.window["context"])
        batch = {"x0": x0, "given": given, "cond": cond, "target": observed & ~cond}
        return batch | {"eps": eps, "sigma": draw.sigma}

    def losses(self, network: nn.Module, batch: dict[str, Tensor], rows: Tensor) -> Tensor:
        device = self.trainer.device
        x0, cond = batch["x0"][rows].to(device), batch["cond"][rows].to(device)
        return denoising_loss(
            self.objective.denoiser(network),
            x0,
            batch["eps"][rows].to(device),
            batch["sigma"][rows].to(device),
            self.objective.weighting,
            where=batch["target"][rows].to(device),
            mask=cond,
            given=batch["given"][rows].to(device),
        )

    def fields(self, stats: dict[str, float]) -> dict[str, Any]:
        return {"epoch": self.order.epoch}

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order.state_dict()}

    def load_state_dict(self, state: dict[str, Any], checkpoint: Checkpoint) -> None:
        self.order.load_state_dict(state["order"])

    def describe(self) -> str:
        s = self.splits
        shape = (self.window["context"] + self.window["horizon"], self.series.dim)
        return (
            f"time series {', '.join(self.series.columns)}: train {s.train.describe()}, val "
            f"{s.val.describe()}, test {s.test.describe()}; {len(self.values)} windows of "
            f"{shape[0]} steps ({self.window}), masks {self.strategy!r}\n"
            + models.summary(self.trainer.net, shape)
        )

    def export(self) -> list[Path]:
        """``model/``: the EMA network with its parameterization, standardizer and window."""
        t = self.trainer
        training = t.record
        model = TimeSeriesModel(
            t.ema.model,
            self.objective.parameterization,
            self.standardizer,
            self.series.columns,
            self.window,
            prior=self.prior,
            data={k: t.config["data"][k] for k in ("date_column", "split")},
            sample=t.config["sample"],
            training=training,
        )
        return [model.save(t.run_dir / "model")]
