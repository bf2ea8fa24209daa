"""Training a policy: the policy task of the one training loop (:class:`difflab.training.loop.Task`),
``difflab policy train --config configs/policy_metaworld.toml [key=value ...]``.

Data: the (observation history, action chunk) windows of demonstrations (:meth:`Demos.windows`)
from ``data.demos`` (.npz), or, when it is empty, ``data.episodes`` episodes of the environment's
scripted expert collected on the fly (:func:`difflab.envs.collect`): a user names a task and gets a
policy. Observations and actions are normalized per dimension (:class:`Normalizer`, fitted on the
demonstrations and saved with the policy).

Methods (``policy.method``):

    diffusion   the [objective] section's denoising objective (default: EDM preconditioning, its
                weighting and log-normal noise levels; Karras et al. 2022), with context dropout for
                classifier-free guidance; ``policy.streaming`` > 0 trains that fraction of each
                batch at per-token ladder noise levels for streaming denoising (Høeg et al. 2024)
    ddpm        Diffusion Policy as its authors ship it (Chi et al. 2023): DDPM eps-prediction,
                squaredcos_cap_v2 betas, 100 training timesteps, uniform integer timesteps
    mse         behaviour cloning with the same network: ||net(0, 0, o) - a||^2
    reflow      a few-step student of the policy ``policy.teacher`` (a folder): reflow on the
                teacher's coupled (noise, chunk) pairs (Liu et al. 2023; difflab.acceleration)

The batch: the next windows of the epoch-wise data order, then the objective's draws (noise levels,
noises, context dropout) from the run's generator. Export: ``model/``, the EMA network as a policy
folder (:class:`~difflab.policy.model.PolicyModel`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from difflab import models
from difflab.acceleration.reflow import GridLevels, reflow_loss, reflow_pairs
from difflab.core import processes
from difflab.data.demos import Demos
from difflab.envs import collect, make
from difflab.policy.model import SAMPLE_DEFAULTS, PolicyModel
from difflab.policy.streaming import ladder_levels
from difflab.training.checkpoint import Checkpoint
from difflab.training.config import LOOP_DEFAULTS, extend
from difflab.training.loop import DataOrder, Task
from difflab.training.objectives import Objective, denoising_loss

__all__ = ["DEFAULTS", "METHODS", "PolicyTask", "ddpm_recipe"]

METHODS = ("diffusion", "ddpm", "mse", "reflow")

DEFAULTS: dict[str, dict[str, Any]] = extend(
    LOOP_DEFAULTS,
    {
        # one thread: a small network on a shared CPU runs fastest without OpenMP contention
        "run": {
            "name": "policy",
            "steps": 3000,
            "log_every": 100,
            "checkpoint_every": 1000,
            "threads": 1,
        },
        # env: the task (difflab.envs.make); demos: a .npz of `difflab policy collect`, or "" to
        # collect `episodes` expert episodes from seed `seed` first
        "data": {
            "env": "toy/obstacle",
            "demos": "",
            "episodes": 100,
            "seed": 0,
            "normalization": "minmax",
        },
        "policy": {
            "method": "diffusion",
            "obs_horizon": 2,
            "pred_horizon": 16,
            "action_horizon": 8,
            "streaming": 0.0,
            "teacher": "",
            "pairs": 4096,
        },
        "model": {"type": "temporal_unet", "down_dims": [32, 64, 128], "embed_dim": 32},
        "objective": {
            "process": "edm",
            "prediction": "edm",
            "weighting": "edm",
            "noise_levels": "lognormal",
            "context_dropout": 0.0,
        },
        "optim": {
            "lr": 1e-3,
            "batch_size": 64,
            "schedule": "cosine",
            "warmup": 100,
            "weight_decay": 1e-6,
        },
        "ema": {"kind": "power", "sigma_rel": 0.05},
        "sample": dict(SAMPLE_DEFAULTS),
    },
)
FREE = ("model", "objective")


def ddpm_recipe(context_dropout: float = 0.0) -> Objective:
    """Diffusion Policy's objective (Chi et al. 2023; Ho et al. 2020): eps-prediction,
    squaredcos_cap_v2 betas over 100 timesteps, t uniform on the integers, ||eps_hat - eps||^2
    (the "snr" weighting of the x0 error)."""
    process = processes.get("vp_discrete", schedule="squaredcos_cap_v2", num_train_timesteps=100)
    return Objective(
        process,
        prediction="eps",
        weighting="snr",
        noise_levels="discrete",
        time_input="t",
        context_dropout=context_dropout,
    )


def _objective(config: dict[str, Any]) -> Objective:
    objective = dict(config)
    process = objective.get("process", "edm")
    objective["process"] = processes.get(process) if isinstance(process, str) else process
    return Objective(**objective)


def load_demos(data: dict[str, Any], progress: bool = False) -> Demos:
    """The demonstrations of the [data] section, checked against its environment: its .npz, or
    ``episodes`` expert episodes collected now."""
    env = make(data["env"])
    if not data["demos"]:
        demos = collect(env.name, int(data["episodes"]), int(data["seed"]), progress=progress).demos
    else:
        path = Path(data["demos"])
        if not path.is_file():
            raise FileNotFoundError(
                f"demonstrations file {path} does not exist (write one with `difflab policy "
                'collect`, or set data.demos = "" to collect them while training)'
            )
        demos = Demos.load(path)
    if (demos.obs_dim, demos.act_dim) != (env.obs_dim, env.act_dim):
        raise ValueError(
            f"demonstrations of {demos.env} have observations of {demos.obs_dim} and actions of "
            f"{demos.act_dim} dimensions, but {env.name} has {env.obs_dim} and {env.act_dim}"
        )
    if demos.env != env.name:
        raise ValueError(f"the demonstrations are of {demos.env}, not of {env.name} (data.env)")
    return demos


class PolicyTask(Task):
    """Train a policy on demonstration windows (module docstring; Chi et al. 2023)."""

    name = "policy"
    cli = ("difflab", "policy", "train")
    defaults = DEFAULTS
    free = FREE

    def build(self) -> nn.Module:
        config = self.trainer.config
        p, data = config["policy"], config["data"]
        if p["method"] not in METHODS:
            raise ValueError(f"unknown policy.method {p['method']!r}; known: {', '.join(METHODS)}")
        self.method = p["method"]
        self.demos = load_demos(data, progress=self.trainer.progress)
        self.horizons = {
            "obs": int(p["obs_horizon"]),
            "pred": int(p["pred_horizon"]),
            "action": int(p["action_horizon"]),
        }
        windows = self.demos.windows(*self.horizons.values())
        mode = data["normalization"]
        self.obs_norm, self.act_norm = self.demos.normalizers(mode)
        self.context = self.obs_norm(windows.observations)
        self.actions = self.act_norm(windows.actions)
        if not 0 <= p["streaming"] <= 1:
            raise ValueError(f"policy.streaming must be a fraction in [0, 1], got {p['streaming']}")
        dropout = float(config["objective"].get("context_dropout", 0.0))
        self.teacher = None
        if self.method == "ddpm":
            self.objective = ddpm_recipe(dropout)
        else:
            self.objective = _objective(config["objective"])
        if self.method == "reflow":
            return self._build_student(p)
        time_embedding = "positional" if self.method == "ddpm" else "fourier"
        network = {
            "time_embedding": time_embedding,
            **config["model"],
            "dim": self.demos.act_dim,
            "context_dim": self.demos.obs_dim,
            "context_length": self.horizons["obs"],
        }
        net = models.build(network)
        self.order = DataOrder(len(self.actions), config["run"]["seed"])
        return net

    def _build_student(self, p: dict[str, Any]) -> nn.Module:
        """Reflow: the teacher's coupled pairs (z, a0 = T(z | o)) on every window, drawn once from
        the run's seed; the student starts as the teacher (Liu et al. 2023)."""
        if not p["teacher"]:
            raise ValueError("policy.method 'reflow' needs policy.teacher, a policy folder")
        teacher = PolicyModel.load(p["teacher"])
        if teacher.method == "mse" or teacher.horizons != self.horizons:
            raise ValueError(
                f"the reflow teacher must be a diffusion policy with horizons {self.horizons}, got "
                f"a {teacher.method} policy with {teacher.horizons}"
            )
        self.teacher = teacher
        self.objective.parameterization = teacher.parameterization
        self.obs_norm, self.act_norm = teacher.obs_normalizer, teacher.act_normalizer
        g = torch.Generator().manual_seed(self.trainer.config["run"]["seed"] + 3)
        n = min(int(p["pairs"]), len(self.actions))
        rows = torch.randperm(len(self.actions), generator=g)[:n]
        self.context = self.obs_norm(self.demos.windows(*self.horizons.values()).observations)[rows]
        z = torch.randn(n, *self.actions.shape[1:], generator=g)
        d = teacher.sample_defaults
        sigmas = teacher.grid()
        pairs = [
            reflow_pairs(
                teacher.denoiser,
                z[i : i + 512],
                sigmas,
                d["sampler"],
                cond={"context": self.context[i : i + 512]},
            )
            for i in range(0, n, 512)
        ]
        self.z, self.actions = z, torch.cat(pairs)
        self.student_grid = self.trainer.config["sample"]
        self.order = DataOrder(n, self.trainer.config["run"]["seed"])
        steps, schedule = int(self.student_grid["steps"]), self.student_grid["schedule"]
        self.levels = GridLevels(teacher.grid(steps, schedule, self.student_grid["sigma_min"]))
        net = models.build(teacher.network.config)
        net.load_state_dict(teacher.network.state_dict())
        return net

    def batch(self, size: int, generator: torch.Generator) -> dict[str, Tensor]:
        idx = self.order.next(size)
        a0, context = self.actions[idx], self.context[idx]
        if self.method == "mse":
            return {"a0": a0, "context": context}
        if self.method == "reflow":
            return {"a0": a0, "context": context, "z": self.z[idx]}
        draw = self.objective.draw(a0, None, generator, context)
        sigma = draw.sigma
        fraction = float(self.trainer.config["policy"]["streaming"])
        if fraction > 0:
            # per-token ladder levels (streaming denoising) for a random `fraction` of the rows
            ladder = ladder_levels(size, self.horizons, generator)
            use = torch.rand(size, generator=generator, dtype=torch.float64) < fraction
            per_token = sigma[:, None].expand(size, self.horizons["pred"])
            sigma = torch.where(use[:, None], ladder, per_token)[..., None]
        return {"a0": a0, "context": draw.context, "eps": draw.eps, "sigma": sigma}

    def losses(self, network: nn.Module, batch: dict[str, Tensor], rows: Tensor) -> Tensor:
        device = self.trainer.device
        a0, context = batch["a0"][rows].to(device), batch["context"][rows].to(device)
        if self.method == "mse":
            zeros = torch.zeros_like(a0)
            out = network(zeros, zeros.new_zeros(len(rows)), context=context)
            return (out - a0).square().flatten(1).mean(1)
        den = self.objective.denoiser(network)
        if self.method == "reflow":
            z = batch["z"][rows].to(device)
            return reflow_loss(den, self.objective, a0, z, self.levels, context=context)
        return denoising_loss(
            den,
            a0,
            batch["eps"][rows].to(device),
            batch["sigma"][rows].to(device),
            self.objective.weighting,
            context=context,
        )

    def fields(self, stats: dict[str, float]) -> dict[str, Any]:
        return {"epoch": self.order.epoch}

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order.state_dict()}

    def load_state_dict(self, state: dict[str, Any], checkpoint: Checkpoint) -> None:
        self.order.load_state_dict(state["order"])

    def describe(self) -> str:
        d = self.demos
        shape = (self.horizons["pred"], d.act_dim)
        return (
            f"{self.method} policy on {d.env}: {d.episodes} demonstrations, {d.steps} steps, "
            f"{len(self.actions)} windows; horizons {self.horizons}\n"
            + models.summary(self.trainer.net, shape)
        )

    def export(self) -> list[Path]:
        """``model/``: the EMA network with its parameterization, normalizers and horizons."""
        t = self.trainer
        method = "diffusion" if self.method == "reflow" else self.method
        training = t.record
        policy = PolicyModel(
            t.ema.model,
            self.objective.parameterization,
            self.obs_norm,
            self.act_norm,
            self.horizons,
            method=method,
            env=self.demos.env,
            sample=t.config["sample"],
            training=training,
        )
        return [policy.save(t.run_dir / "model")]
