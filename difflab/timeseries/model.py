"""A diffusion model of multivariate time-series windows: a denoiser over standardized windows
[L, K] conditioned on their given entries, with the per-column standardization of its training
split, saved as one model folder of type "timeseries" (:mod:`difflab.utils.folder`).

    model = TimeSeriesModel.load("runs/ts_ett/model")
    paths = model.forecast(history, samples=50)         # [N, C, K] -> [S, N, H, K]
    filled = model.impute(values, given, samples=50)    # [N, L, K] -> [S, N, L, K]

One denoiser serves forecasting and imputation: D(x, sigma | m, g) = E[x0 | x, x0[m] = g] (CSDI,
Tashiro et al. 2021); forecasting gives the first C steps of a window, imputation the observed
entries. Sampling keeps the given entries exactly (:func:`difflab.core.conditioning.keep_given`), so
any difflab sampler runs on any grid at any NFE.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from difflab import models, sampling, schedules
from difflab.core.conditioning import impose_given, keep_given
from difflab.core.parameterization import Parameterization
from difflab.data.normalization import Normalizer
from difflab.timeseries.baselines import DLinear
from difflab.utils.folder import (
    WEIGHTS,
    model_folder,
    read_folder_config,
    read_folder_weights,
    save_folder,
)
from difflab.utils.weights import load_state_dict_strict

__all__ = ["DATA_DEFAULTS", "SAMPLE_DEFAULTS", "TYPE", "TimeSeriesModel", "sample_given"]

TYPE = "timeseries"
# DPM-Solver++(2M), 20 steps from sigma 20: on the exact AR(1) forecast (phi 0.8) its variance is
# within 7 % of the truth; 10 Heun steps from 80 (EDM's image default) are 35-46 % too wide
SAMPLE_DEFAULTS: dict[str, Any] = {
    "sampler": "dpmpp_2m",
    "schedule": "karras",
    "steps": 20,
    "sigma_min": 0.0,
    "sigma_max": 20.0,
}
DATA_DEFAULTS: dict[str, Any] = {"date_column": "date", "split": "auto"}  # how to read its CSVs
_KEYS = ("network", "parameterization", "columns", "window", "sample")


def sample_given(
    denoiser: Callable[..., Tensor],
    given: Tensor,
    mask: Tensor,
    sigmas: Tensor,
    sampler: str = "heun",
    generator: torch.Generator | None = None,
) -> Tensor:
    """x0 = sampler(D(. | m, g), m g + (1 - m) sigma_0 z, sigmas), z ~ N(0, I): a sample of
    p(x0 | x0[m] = g) by any conditional denoiser D(x, sigma, mask, given) (e.g. :func:`keep_given`
    around a network), the given entries kept exactly (Tashiro et al. 2021, CSDI)."""
    start = float(sigmas[0])
    z = sampling.randn(given.shape, generator, given.dtype, given.device)
    x = impose_given(z * start if math.isfinite(start) else z, mask, given)
    cond = {"mask": mask, "given": given}
    return sampling.get(sampler)(denoiser, x, sigmas, generator=generator, cond=cond)


def prior_mean(prior: nn.Module, given: Tensor, context: int) -> Tensor:
    """mu = [g_{1..C}; f(g_{1..C})]: the given context followed by a point forecaster's forecast of the
    rest, the prior mean a residual diffusion model adds back (CARD's f_phi, Han et al. 2022)."""
    history = given[:, :context]
    return torch.cat([history, prior(history.to(torch.float32)).to(given.dtype)], dim=1)


def residual_denoiser(denoiser: Callable[..., Tensor], prior: nn.Module, context: int) -> Callable:
    """D(x | m, g) = mu(g) + D_r(x - mu(g) | m, g): a denoiser of the residual x0 - mu around the
    prior mean :func:`prior_mean` (its network sees the given values themselves) is a denoiser of
    x0 (Han et al. 2022, CARD)."""

    def denoise(x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        mu = prior_mean(prior, cond["given"], context).to(x.dtype)
        return mu + denoiser(x - mu, sigma, **cond)

    return denoise


class TimeSeriesModel(nn.Module):
    """p(x0[~m] | x0[m] = g) over windows of ``window["context"] + window["horizon"]`` steps of
    ``columns``, by a denoiser over standardized values (module docstring; Tashiro et al. 2021);
    ``data`` says how its CSV files are read and split (date column, split kind)."""

    def __init__(
        self,
        network: nn.Module,
        parameterization: Parameterization,
        standardizer: Normalizer,
        columns: list[str] | tuple[str, ...],
        window: dict[str, int],
        *,
        prior: nn.Module | None = None,
        data: dict[str, Any] | None = None,
        sample: dict[str, Any] | None = None,
        training: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if len(columns) != standardizer.dim:
            raise ValueError(
                f"{len(columns)} column names for a standardizer of {standardizer.dim} columns"
            )
        context, horizon = int(window["context"]), int(window["horizon"])
        if context < 0 or horizon < 1:
            raise ValueError(f"a window needs context >= 0 and horizon >= 1, got {window}")
        self.network, self.parameterization = network, parameterization
        self.standardizer, self.columns = standardizer, tuple(columns)
        self.window = {"context": context, "horizon": horizon}
        self.data = {**DATA_DEFAULTS, **(data or {})}
        self.sample_defaults = {**SAMPLE_DEFAULTS, **(sample or {})}
        self.training_info = dict(training or {})  # not self.training: nn.Module's train mode
        self.prior = prior
        denoiser = parameterization.denoiser(network)
        if prior is not None:
            if context < 1:
                raise ValueError("a prior forecaster needs context steps (window context >= 1)")
            denoiser = residual_denoiser(denoiser, prior, context)
        self.denoiser = keep_given(denoiser)

    @property
    def dim(self) -> int:
        return self.standardizer.dim

    @property
    def length(self) -> int:
        """L = context + horizon, the window the network was trained on."""
        return self.window["context"] + self.window["horizon"]

    @property
    def config(self) -> dict[str, Any]:
        """The model folder's config (type "timeseries")."""
        return {
            "type": TYPE,
            "network": dict(self.network.config),
            "parameterization": self.parameterization.config,
            "columns": list(self.columns),
            "window": dict(self.window),
            "prior": None
            if self.prior is None
            else {"type": "dlinear", "kernel": self.prior.kernel},
            "data": dict(self.data),
            "sample": dict(self.sample_defaults),
            "training": self.training_info,
        }

    def grid(self, steps: int | None = None, schedule: str | None = None) -> Tensor:
        """sigma_0 > ... > sigma_steps = 0 on ``schedule`` (default: the sampling defaults')."""
        d = self.sample_defaults
        steps = int(d["steps"] if steps is None else steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return schedules.get(schedule or d["schedule"])(
            steps,
            d["sigma_min"] or None,
            d["sigma_max"] or None,
            process=self.parameterization.process,
        )

    def nfe(self, sampler: str | None = None, steps: int | None = None) -> int:
        """Network evaluations per sample path."""
        d = self.sample_defaults
        return sampling.info(sampler or d["sampler"]).nfe(int(steps or d["steps"]))

    def _check(self, values: Tensor, what: str) -> None:
        if values.ndim != 3 or values.shape[2] != self.dim:
            raise ValueError(
                f"{what} must be [N, steps, {self.dim}] ({', '.join(self.columns)}), got "
                f"{list(values.shape)}"
            )

    @torch.no_grad()
    def sample(
        self,
        values: Tensor,
        given: Tensor,
        samples: int = 1,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        schedule: str | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 256,
    ) -> Tensor:
        """Sample paths [S, N, L, K] (unstandardized) of windows [N, L, K] whose ``given`` [N, L, K]
        entries are ``values`` there: x0 = sampler(D(. | m, g), m g + (1 - m) sigma_0 z, grid), the
        given entries kept exactly; the S N paths run ``batch_size`` at a time."""
        self._check(values, "values")
        if given.shape != values.shape:
            raise ValueError(f"given must have the values' shape {list(values.shape)}")
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        given = given.bool()
        if not bool(torch.isfinite(values[given]).all()):
            raise ValueError("the given values contain NaN or inf")
        device = next(self.network.parameters()).device
        g = self.standardizer(torch.where(given, values, 0.0).to(device, torch.float32))
        g, m = g.repeat(samples, 1, 1), given.to(device).repeat(samples, 1, 1)
        sigmas = self.grid(steps, schedule)
        name = sampler or self.sample_defaults["sampler"]
        out = [
            sample_given(
                self.denoiser, g[i : i + batch_size], m[i : i + batch_size], sigmas, name, generator
            )
            for i in range(0, len(g), batch_size)
        ]
        paths = self.standardizer.unnormalize(torch.cat(out)).cpu().to(values.dtype)
        return torch.where(given, values, paths.reshape(samples, *values.shape))  # given: exact

    def forecast(self, history: Tensor, samples: int = 1, **options: Any) -> Tensor:
        """Forecast paths [S, N, H, K] of the ``horizon`` steps after histories [N, C, K] (the
        model's context length C), sampled by :meth:`sample`."""
        self._check(history, "histories")
        c, h = self.window["context"], self.window["horizon"]
        if history.shape[1] != c:
            raise ValueError(
                f"histories must have the model's {c} context steps, got {history.shape[1]}"
            )
        n, k = history.shape[0], self.dim
        values = torch.cat([history, history.new_zeros(n, h, k)], dim=1)
        given = torch.zeros(n, c + h, k, dtype=torch.bool)
        given[:, :c] = True
        return self.sample(values, given, samples, **options)[:, :, c:]

    def impute(self, values: Tensor, given: Tensor, samples: int = 1, **options: Any) -> Tensor:
        """Imputed windows [S, N, L, K]: the ``given`` entries of ``values`` [N, L, K] kept, the
        others sampled by :meth:`sample`."""
        return self.sample(values, given, samples, **options)

    # -------------------------------------------------------------------------------- folders

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the model as a model folder of type "timeseries" (network and standardizer)."""
        return save_folder(folder, self.config, self.state_dict())

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TimeSeriesModel:
        """An untrained model of a folder's config (the standardizer comes with the weights)."""
        missing = [k for k in _KEYS if k not in config]
        if missing:
            raise ValueError(f"the time-series model config lacks {', '.join(missing)}")
        return cls(
            models.build(config["network"]),
            Parameterization.from_config(config["parameterization"]),
            Normalizer(len(config["columns"]), "meanstd"),
            config["columns"],
            config["window"],
            prior=_prior(config.get("prior"), config["window"]),
            data=config.get("data"),
            sample=config["sample"],
            training=config.get("training"),
        )

    @classmethod
    def load(
        cls, folder: str | os.PathLike[str], device: str | torch.device = "cpu"
    ) -> TimeSeriesModel:
        """The model saved in ``folder`` (or a run folder's ``model/``); a folder of another model
        type is a ValueError naming it."""
        folder = model_folder(folder)
        config = read_folder_config(folder, TYPE)
        try:
            model = cls.from_config(config)
        except (KeyError, TypeError) as e:
            raise ValueError(f"{folder}: invalid time-series model config ({e})") from None
        load_state_dict_strict(model, read_folder_weights(folder), f"{folder / WEIGHTS}")
        return model.to(device).eval().requires_grad_(False)


def _prior(config: dict[str, Any] | None, window: dict[str, int]) -> nn.Module | None:
    """The untrained prior forecaster of a folder's config (its weights come with the model's)."""
    if config is None:
        return None
    if config.get("type") != "dlinear":
        raise ValueError(f"unknown prior forecaster {config.get('type')!r}; known: dlinear")
    return DLinear(int(window["context"]), int(window["horizon"]), int(config["kernel"]))
