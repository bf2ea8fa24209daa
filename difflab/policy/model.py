"""A diffusion policy: a denoiser over action chunks [pred_horizon, act_dim] conditioned on the
observation history [obs_horizon, obs_dim], with the normalizers of both, saved as one model folder
of type "policy" (:mod:`difflab.utils.folder`).

    policy = PolicyModel.load("runs/policy/model")
    chunk = policy.chunks(history)            # history [N, To, obs_dim] -> actions [N, H, act_dim]

The network sees normalized actions x (the sample) and normalized observations (``context``), as in
Diffusion Policy (Chi et al. 2023); D(x, sigma, context) = E[a0 | x = a0 + sigma eps, o] is the one
denoiser convention (DESIGN.md), so any difflab sampler runs on any grid at any NFE, and classifier-
free guidance on the observation (which holds the goal in MetaWorld's MT1 observations and in
toy/obstacle) is ``guidance=w`` after training with context dropout (Ho & Salimans 2022).

Methods (``config["method"]``): "diffusion" (difflab's parameterization, default EDM), "ddpm" (the
Diffusion Policy recipe: DDPM eps-prediction, squaredcos_cap_v2 betas, 100 timesteps; sampled by
difflab samplers or by diffusers' DDPMScheduler / DDIMScheduler, :mod:`difflab.policy.recipes`),
"mse" (behaviour cloning: the same network regresses the chunk, a = net(0, 0, o), one call).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from difflab import models, sampling, schedules
from difflab.core.parameterization import Parameterization
from difflab.data.normalization import Normalizer
from difflab.guidance import classifier_free
from difflab.policy.recipes import SCHEDULERS, scheduler_sample
from difflab.utils.folder import WEIGHTS, read_folder_config, read_folder_weights, save_folder
from difflab.utils.folder import model_folder as policy_folder
from difflab.utils.weights import load_state_dict_strict

__all__ = ["METHODS", "SAMPLE_DEFAULTS", "TYPE", "PolicyModel", "policy_folder"]

TYPE = "policy"
METHODS = ("diffusion", "ddpm", "mse")
# sigma_min 0.1, not EDM's image default 0.002: a grid's last interval sigma_min -> 0 costs one
# NFE, which at 0.002 changes nothing (Karras at 2 steps is [80, 0.002, 0], in effect 1 NFE); on
# held-out MetaWorld episodes (seed 2000) 2-NFE success rose from 0.74-0.92 to 0.98-1.00 with it
SAMPLE_DEFAULTS: dict[str, Any] = {
    "sampler": "heun",
    "schedule": "karras",
    "steps": 5,
    "guidance": 1.0,
    "sigma_min": 0.1,
    "sigma_max": 0.0,
}
_KEYS = ("network", "parameterization", "method", "horizons", "dims", "env", "sample")


class PolicyModel(nn.Module):
    """pi(a_{t-To+1 .. t-To+H} | o_{t-To+1 .. t}) by a denoiser over normalized action chunks
    (Chi et al. 2023): ``network`` with ``parameterization``, observation / action normalizers,
    horizons {obs, pred, action} and sampling defaults (module docstring)."""

    def __init__(
        self,
        network: nn.Module,
        parameterization: Parameterization,
        obs_normalizer: Normalizer,
        act_normalizer: Normalizer,
        horizons: dict[str, int],
        *,
        method: str = "diffusion",
        env: str = "",
        sample: dict[str, Any] | None = None,
        training: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown policy method {method!r}; known: {', '.join(METHODS)}")
        to, h, ta = horizons["obs"], horizons["pred"], horizons["action"]
        if not (1 <= to <= h and 1 <= ta <= h - to + 1):
            raise ValueError(
                f"horizons need 1 <= obs <= pred and 1 <= action <= pred - obs + 1, got {horizons}"
            )
        self.network, self.parameterization = network, parameterization
        self.obs_normalizer, self.act_normalizer = obs_normalizer, act_normalizer
        self.horizons = {"obs": int(to), "pred": int(h), "action": int(ta)}
        self.method, self.env = method, env
        self.sample_defaults = {**SAMPLE_DEFAULTS, **(sample or {})}
        self.training_info = dict(training or {})  # not self.training: nn.Module's train mode
        self.denoiser = parameterization.denoiser(network)

    @property
    def obs_dim(self) -> int:
        return self.obs_normalizer.dim

    @property
    def act_dim(self) -> int:
        return self.act_normalizer.dim

    @property
    def config(self) -> dict[str, Any]:
        """The model folder's config (type "policy")."""
        return {
            "type": TYPE,
            "network": dict(self.network.config),
            "parameterization": self.parameterization.config,
            "method": self.method,
            "horizons": dict(self.horizons),
            "dims": {"obs": self.obs_dim, "act": self.act_dim},
            "normalization": {"obs": self.obs_normalizer.mode, "act": self.act_normalizer.mode},
            "env": self.env,
            "sample": dict(self.sample_defaults),
            "training": self.training_info,
        }

    # ------------------------------------------------------------------------------ sampling

    def grid(
        self, steps: int | None = None, schedule: str | None = None, sigma_min: float | None = None
    ) -> Tensor:
        """sigma_0 > ... > sigma_steps = 0: the grid ``schedule`` (default: the sampling
        defaults') with ``steps`` intervals between ``sigma_min`` (default: the defaults', or the
        process's) and the defaults' (or the process's) sigma_max."""
        d = self.sample_defaults
        steps = int(d["steps"] if steps is None else steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        low = d["sigma_min"] if sigma_min is None else sigma_min
        return schedules.get(schedule or d["schedule"])(
            steps,
            low or None,
            d["sigma_max"] or None,
            process=self.parameterization.process,
        )

    def context(self, observations: Tensor) -> Tensor:
        """Normalized observation histories [N, To, obs_dim] (float32, the network's device)."""
        device = next(self.network.parameters()).device
        want = (self.horizons["obs"], self.obs_dim)
        if observations.ndim != 3 or tuple(observations.shape[1:]) != want:
            raise ValueError(
                f"observation histories must be [N, {want[0]}, {want[1]}], got "
                f"{list(observations.shape)}"
            )
        return self.obs_normalizer(observations.to(device, torch.float32))

    def guided(self, guidance: float) -> Any:
        """The denoiser with classifier-free guidance of weight w on the observation context
        (w = 1: the plain conditional denoiser; Ho & Salimans 2022)."""
        if guidance == 1.0:
            return self.denoiser
        return classifier_free(self.denoiser, guidance, condition="context")

    def noise(
        self, n: int, generator: torch.Generator | Sequence[torch.Generator] | None
    ) -> Tensor:
        """Unit noise [n, H, act_dim]; row i from ``generator[i]`` alone when given a list."""
        shape = (n, self.horizons["pred"], self.act_dim)
        device = next(self.network.parameters()).device
        return sampling.randn(shape, generator, torch.float32, device)

    @torch.no_grad()
    def chunks(
        self,
        observations: Tensor,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        schedule: str | None = None,
        sigma_min: float | None = None,
        guidance: float | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> Tensor:
        """Action chunks [N, H, act_dim] (unnormalized) for observation histories [N, To, obs_dim]:
        a0 = sampler(D(., ., o), sigma_0 z, grid), one batched denoiser call per sampler
        evaluation for all N (Chi et al. 2023); "mse" policies regress it in one call. ``sampler``
        "diffusers_ddpm" / "diffusers_ddim" run a "ddpm" policy with diffusers' schedulers
        (:mod:`difflab.policy.recipes`)."""
        context = self.context(observations)
        n = context.shape[0]
        if self.method == "mse":
            x = torch.zeros(n, self.horizons["pred"], self.act_dim, device=context.device)
            return self.act_normalizer.unnormalize(self.network(x, x.new_zeros(n), context=context))
        d = self.sample_defaults
        name = sampler or d["sampler"]
        z = self.noise(n, generator)
        if name in SCHEDULERS:
            if self.method != "ddpm":
                raise ValueError(f"sampler {name!r} runs policies of method 'ddpm' only")
            steps = int(steps or SCHEDULERS[name])
            train_steps = self.parameterization.process.num_train_timesteps
            a0 = scheduler_sample(self.network, name, steps, train_steps, z, context, generator)
            return self.act_normalizer.unnormalize(a0)
        sigmas = self.grid(steps, schedule, sigma_min)
        start = float(sigmas[0])
        x = z * start if math.isfinite(start) else z
        den = self.guided(float(d["guidance"] if guidance is None else guidance))
        a0 = sampling.get(name)(den, x, sigmas, generator=generator, cond={"context": context})
        return self.act_normalizer.unnormalize(a0)

    def nfe(self, sampler: str | None = None, steps: int | None = None) -> int:
        """Network evaluations per chunk (classifier-free guidance doubles the batch, not the
        calls)."""
        if self.method == "mse":
            return 1
        d = self.sample_defaults
        name = sampler or d["sampler"]
        if name in SCHEDULERS:
            return int(steps or SCHEDULERS[name])
        return sampling.info(name).nfe(int(steps or d["steps"]))

    # -------------------------------------------------------------------------------- folders

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the policy as a model folder of type "policy" (weights: network and normalizers)."""
        return save_folder(folder, self.config, self.state_dict())

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PolicyModel:
        """An untrained policy of a folder's config (the normalizers' statistics come with the
        weights)."""
        missing = [k for k in _KEYS if k not in config]
        if missing:
            raise ValueError(f"the policy config lacks {', '.join(missing)}")
        modes = config.get("normalization", {})
        return cls(
            models.build(config["network"]),
            Parameterization.from_config(config["parameterization"]),
            Normalizer(int(config["dims"]["obs"]), modes.get("obs", "minmax")),
            Normalizer(int(config["dims"]["act"]), modes.get("act", "minmax")),
            config["horizons"],
            method=config["method"],
            env=config["env"],
            sample=config["sample"],
            training=config.get("training"),
        )

    @classmethod
    def load(
        cls, folder: str | os.PathLike[str], device: str | torch.device = "cpu"
    ) -> PolicyModel:
        """The policy saved in ``folder`` (or a run folder's ``model/``); a folder of another
        model type is a ValueError naming it."""
        folder = policy_folder(folder)
        config = read_folder_config(folder, TYPE)
        try:
            policy = cls.from_config(config)
        except (KeyError, TypeError) as e:
            raise ValueError(f"{folder}: invalid policy config ({e})") from None
        load_state_dict_strict(policy, read_folder_weights(folder), f"{folder / WEIGHTS}")
        return policy.to(device).eval().requires_grad_(False)
