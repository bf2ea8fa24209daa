"""Reward and preference fine-tuning runs: ``difflab finetune --config configs/finetune_*.toml
[key=value ...]``, or :func:`finetune` with a base model (or what loads one by name:
``difflab.load``, as the command does).

    finetune(difflab.load, "configs/finetune_mixture_ddpo.toml", ["run.steps=100"])

:class:`FinetuneTask` is the task of the one training loop (:class:`difflab.training.loop.Trainer`),
for five methods, each its own module of losses:

    ddpo   PPO on the denoising MDP, per-label advantages       :mod:`~difflab.finetune.ddpo` (Black et al. 2023)
    dpok   policy gradient + the chains' KL to the base         :mod:`~difflab.finetune.dpok` (Fan et al. 2023)
    draft  the reward backpropagated through the last K steps   :mod:`~difflab.finetune.draft` (Clark et al. 2023; AlignProp)
    dpo    Diffusion-DPO on preference pairs, base as reference :mod:`~difflab.finetune.dpo` (Wallace et al. 2023)
    d3po   DPO on pairs of trajectories of the current model    :mod:`~difflab.finetune.d3po` (Yang et al. 2024)

The config (:data:`DEFAULTS`): [base] model (a model name or folder), [reward] name (a name of
:mod:`difflab.finetune.rewards` or, from Python, a callable), [method] name and its options
(:data:`METHODS`; ``beta`` is always the KL coefficient of the optimum p exp(r / beta) / Z of
:func:`difflab.testing.tilted`), [sample] the stochastic sampler of the MDP (one of
:func:`difflab.sampling.transition_samplers`), its steps, grid, options, the class labels sampled
(``none``: the null class of a class-conditional model, ``cycle`` or a class) and ``batch``, the
trajectories of a round (the pairs of D3PO's); [lora] rank (0: full fine-tuning), alpha, targets,
merge and init (an adapter folder to start from); the loop's [optim], [run], [ema] (default: none).

On-policy methods (ddpo, dpok, d3po) sample a round of ``sample.batch`` trajectories with the current
network (no gradients), then take ``method.inner_epochs`` passes over it in minibatches of
``optim.batch_size``, one optimizer step each; DRaFT samples its batch afresh every step with
gradients through the last K steps; DPO draws its pairs from the base model once (``method.pairs``,
kept in the run folder, Bradley-Terry labels from the reward) or reads them from ``method.data`` (an
.npz with x_w, x_l and optionally labels). The network runs in eval mode (no dropout), so the policy
scored is the one that sampled. Everything random comes from the run's generator: runs resume bit
for bit.

The end: ``model/``, the fine-tuned model as a diffusion model folder (full fine-tuning), or an
adapter folder (type "adapter": the LoRA factors, the base model's name or path and its weights
digest) that ``difflab.load`` opens on its base, plus ``model_merged/`` with ``lora.merge``. The base
model is read, never written.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from difflab import models, sampling
from difflab.finetune import rewards
from difflab.finetune.advantages import LabelStats
from difflab.finetune.d3po import d3po_loss
from difflab.finetune.ddpo import kl_penalized_reward, ppo_loss
from difflab.finetune.dpo import (
    bradley_terry,
    diffusion_dpo_loss,
    elbo_weight,
    log_uniform,
)
from difflab.finetune.dpok import dpok_loss
from difflab.finetune.draft import decoder_stds, draft_loss, truncated, truncation
from difflab.finetune.kl import path_kl, step_kl, transition_means
from difflab.models.lora import (
    add_lora,
    freeze_base,
    load_adapter,
    lora_disabled,
    lora_layers,
    merge_lora,
    save_adapter,
    weights_digest,
)
from difflab.models.saved import diffusion_config
from difflab.sampling import Trajectory, log_probs, replay, trajectory, transition_samplers
from difflab.training.checkpoint import Checkpoint
from difflab.training.config import LOOP_DEFAULTS, extend
from difflab.training.loop import DataOrder, Task, Trainer, run
from difflab.training.objectives import denoising_loss
from difflab.utils.folder import save_folder
from difflab.utils.names import check_name, unknown_name
from difflab.utils.weights import load_weights, save_weights

__all__ = ["DEFAULTS", "METHODS", "FinetuneTask", "finetune", "method_config"]

# each method's options and their defaults ([method] section)
METHODS: dict[str, dict[str, Any]] = {
    "ddpo": {
        "beta": 0.0,
        "clip": 0.2,
        "adv_clip": 5.0,
        "inner_epochs": 1,
        "buffer": 16,
        "min_count": 16,
    },
    "dpok": {"beta": 0.1, "clip": 0.2, "inner_epochs": 1, "buffer": 16, "min_count": 16},
    "draft": {"k": 1, "random": False, "beta": 0.0, "checkpoint": True},
    "dpo": {"beta": 1.0, "pairs": 1000, "data": "", "sigma_min": 0.0, "sigma_max": 0.0},
    "d3po": {"beta": 1.0, "clip": 0.0, "inner_epochs": 1},
}
ON_POLICY = ("ddpo", "dpok", "d3po")
LABELS = ("none", "cycle")

DEFAULTS: dict[str, dict[str, Any]] = extend(
    LOOP_DEFAULTS,
    {
        "run": {
            "name": "finetune",
            "steps": 200,
            "log_every": 10,
            "checkpoint_every": 100,
            "eval_every": 0,
            "eval_n": 256,
        },
        "base": {"model": "mnist"},
        "reward": {"name": ""},
        "method": {"name": "ddpo"},
        "sample": {
            "sampler": "ddim_eta",
            "steps": 20,
            "schedule": "",
            "sigma_min": 0.0,
            "sigma_max": 0.0,
            "options": {},
            "labels": "none",
            "batch": 64,
        },
        "lora": {"rank": 0, "alpha": 0.0, "targets": [], "merge": False, "init": ""},
        "optim": {"lr": 1e-4, "batch_size": 16},
        "ema": {"kind": "constant", "decay": 0.0},  # no averaging: export the trained weights
    },
)
FREE = ("method",)  # checked by method_config


def method_config(method: dict[str, Any]) -> dict[str, Any]:
    """The [method] section with the method's defaults filled in and its options checked."""
    name = method.get("name")
    if name not in METHODS:
        raise unknown_name("fine-tuning method", str(name), METHODS)
    for key in method:
        if key != "name" and key not in METHODS[name]:
            raise unknown_name(f"option of method {name!r}", key, METHODS[name])
    full = {"name": name, **METHODS[name], **{k: v for k, v in method.items() if k != "name"}}
    if not (isinstance(full["beta"], int | float) and math.isfinite(full["beta"])):
        raise ValueError(f"method.beta must be a number, got {full['beta']!r}")
    if full["beta"] < 0 or (name in ("dpo", "d3po") and full["beta"] == 0):
        what = "> 0" if name in ("dpo", "d3po") else ">= 0"
        raise ValueError(f"{name}: method.beta must be {what}, got {full['beta']}")
    for key in ("inner_epochs", "k", "pairs", "buffer", "min_count"):
        valid = (
            isinstance(full.get(key), int) and not isinstance(full[key], bool) and full[key] >= 1
        )
        if key in full and not valid:
            raise ValueError(f"{name}: method.{key} must be an integer >= 1, got {full[key]!r}")
    return full


def _rows(t: Trajectory, idx: Tensor) -> Trajectory:
    """The trajectories ``idx`` of a batch of them."""
    return Trajectory(t.sigmas, t.xs[:, idx], t.means[:, idx], t.stds, t.log_probs[:, idx], t.nfe)


def _cond(labels: Tensor | None) -> dict[str, Tensor]:
    return {} if labels is None else {"labels": labels}


class FinetuneTask(Task):
    """Fine-tune a saved diffusion model toward a reward or preferences (module docstring).
    ``model``: the base model (a :class:`difflab.pretrained.Model`: its network, parameterization,
    config and step grids), or a function that loads one by name or folder (``difflab.load``),
    called with [base] model when the run starts. ``reward``: a callable reward replacing [reward]
    name (Python only)."""

    name = "finetune"
    cli = ("difflab", "finetune")
    defaults = DEFAULTS
    free = FREE

    def __init__(self, model: Any, reward: Any = None) -> None:
        self.model, self.reward_fn = model, reward

    # ------------------------------------------------------------------ setting up

    def build(self) -> nn.Module:
        config = self.trainer.config
        config["method"] = method = method_config(config["method"])
        self.kind, self.beta = method["name"], float(method["beta"])
        spec = config["base"]["model"]
        if not hasattr(self.model, "denoiser"):  # a loader
            self.model = self.model(spec)
        model = self.model.to(self.trainer.device)
        self.base = model.denoiser
        self.parameterization = model.parameterization
        self.shape, self.num_classes = tuple(model.shape), model.num_classes
        folder = getattr(model, "folder", None)
        self.base_ref = str(Path(folder).resolve()) if Path(spec).exists() and folder else spec
        self.base_digest = weights_digest(model.network)
        reward = self.reward_fn or config["reward"]["name"]
        if not reward:
            raise ValueError(
                "no reward: set reward.name (e.g. reward.name=ink, see `difflab finetune --help`)"
            )
        self.reward = rewards.get(reward, dim=self.shape[0] if len(self.shape) == 1 else None)
        self._sampling(config["sample"], model)
        net = copy.deepcopy(model.network)
        self.lora = self._adapt(net, config["lora"])
        self.trained = [p for p in net.parameters() if p.requires_grad]
        run, size = config["run"], config["optim"]["batch_size"]
        self.logged: dict[str, float] = {}
        if self.kind in ON_POLICY:
            self.round: dict[str, Any] | None = None
            self.schedule, self.position = torch.zeros(0, dtype=torch.long), 0
            self.stats = LabelStats(method.get("buffer", 16), method.get("min_count", 16))
            if self.round_size % size:
                raise ValueError(
                    f"{self.kind}: sample.batch ({self.round_size}) must be a multiple of "
                    f"optim.batch_size ({size})"
                )
        if self.kind == "dpo":
            self.sigma_range = self._dpo_range(method)
            self.pairs = self._pairs(method)
            self.order = DataOrder(len(self.pairs[0]), run["seed"])
        return net

    def _sampling(self, s: dict[str, Any], model: Any) -> None:
        check_name(
            "sampler of the fine-tuning MDP (a stochastic one)", s["sampler"], transition_samplers()
        )
        if not isinstance(s["options"], dict):
            raise ValueError(
                f"sample.options must be a table of sampler options, got {s['options']!r}"
            )
        self.sampler, self.options = s["sampler"], dict(s["options"])
        self.sigmas = model.grid(
            s["schedule"] or None, s["steps"], s["sigma_min"] or None, s["sigma_max"] or None
        )
        labels = s["labels"]
        if isinstance(labels, bool) or not (labels in LABELS or isinstance(labels, int)):
            raise ValueError(f"sample.labels must be 'none', 'cycle' or a class, got {labels!r}")
        if isinstance(labels, int) and not 0 <= labels < self.num_classes:
            raise ValueError(
                f"sample.labels {labels} is not a class of {model.name} "
                f"({self.num_classes} classes)"
            )
        if labels == "none" and self.num_classes and not model.null_class:
            raise ValueError(
                f"{model.name} has no trained null class to sample without a label: set "
                "sample.labels to 'cycle' or a class"
            )
        self.labels = labels
        self.round_size = int(s["batch"])
        if self.round_size < 1:
            raise ValueError(f"sample.batch must be >= 1, got {self.round_size}")

    def _adapt(self, net: nn.Module, lora: dict[str, Any]) -> bool:
        """LoRA adapters on ``net`` (lora.init: those of an adapter folder for this base), only them
        trained; or every weight trained (rank 0). Returns whether LoRA is used."""
        if lora["init"]:
            load_adapter(lora["init"], net, self.base_digest)
        elif lora["rank"]:
            add_lora(net, lora["rank"], lora["alpha"] or None, lora["targets"] or None)
        if not lora_layers(net):
            net.requires_grad_(True)
            return False
        freeze_base(net)
        return True

    def _dpo_range(self, method: dict[str, Any]) -> tuple[float, float]:
        levels = [float(s) for s in self.sigmas if 0 < s < math.inf]
        lo = float(method["sigma_min"]) or min(levels)
        hi = float(method["sigma_max"]) or max(levels)
        if not 0 < lo < hi < math.inf:
            raise ValueError(
                f"dpo: need 0 < method.sigma_min < method.sigma_max < inf, got {lo}, {hi}"
            )
        return lo, hi

    # ------------------------------------------------------------------ the models

    def policy(self, network: nn.Module) -> Any:
        """The trained network's denoiser (the policy whose steps are the MDP's actions)."""
        return self.parameterization.denoiser(network)

    @contextmanager
    def reference(self) -> Iterator[Any]:
        """The frozen base model's denoiser: the trained network with its adapters off (LoRA), or
        the base model's own."""
        if self.lora:
            with lora_disabled(self.trainer.net):
                yield self.policy(self.trainer.net)
        else:
            yield self.base

    def _labels(self, n: int) -> tuple[Tensor | None, Tensor | None]:
        """(labels the denoiser gets, labels the reward gets) of n samples."""
        if not self.num_classes:
            return None, None
        if self.labels == "none":
            return torch.full((n,), -1, device=self.trainer.device), None
        y = (
            torch.arange(n) % self.num_classes
            if self.labels == "cycle"
            else torch.full((n,), self.labels)
        )
        y = y.to(self.trainer.device)
        return y, y

    def _start(self, n: int, generator: torch.Generator) -> tuple[Tensor, list[torch.Generator]]:
        """x at sigma_0 and the per-sample noise generators of n trajectories."""
        seed = int(torch.randint(2**62, (), generator=generator))
        gens = sampling.generators(seed, n)
        dtype = next(self.model.network.parameters()).dtype
        x = sampling.randn((n, *self.shape), gens, dtype, self.trainer.device)
        start = float(self.sigmas[0])
        return (x * start if math.isfinite(start) else x), gens

    def _sample(
        self, denoiser: Any, n: int, generator: torch.Generator, pairs: bool = False
    ) -> tuple[Trajectory, Tensor | None, Tensor | None]:
        """n trajectories of the sampler under ``denoiser`` (no gradients) and their labels; with
        ``pairs``, sample i and n/2 + i share their label (one prompt per preference pair)."""
        x, gens = self._start(n, generator)
        labels, reward_labels = self._labels(n // 2 if pairs else n)
        if pairs:
            labels, reward_labels = (
                None if y is None else y.repeat(2) for y in (labels, reward_labels)
            )
        with torch.no_grad():
            traj = trajectory(
                self.sampler,
                denoiser,
                x,
                self.sigmas,
                generator=gens,
                cond=_cond(labels),
                **self.options,
            )
        return traj, labels, reward_labels

    # ------------------------------------------------------------------ one step

    def batch(self, size: int, generator: torch.Generator) -> dict[str, Any]:
        """The step's draws: a minibatch of the round (on-policy methods, sampling a new round when
        the last one is used up), fresh starts and the truncation K (DRaFT), or pairs, noise levels
        and noises (DPO)."""
        self.trainer.net.eval()  # the policy that samples is the one scored: no dropout
        self.logged = {}
        if self.kind in ON_POLICY:
            if self.position >= len(self.schedule):
                self._new_round(generator)
            idx = self.schedule[self.position : self.position + size]
            self.position += size
            return {"idx": idx}
        if self.kind == "draft":
            x, gens = self._start(size, generator)
            steps = len(self.sigmas) - 1
            k = truncation(self.method["k"], steps, self.method["random"], generator)
            labels, reward_labels = self._labels(size)
            return {"x": x, "gens": gens, "k": k, "labels": labels, "reward_labels": reward_labels}
        idx = self.order.next(size)
        x_w, x_l, labels = self.pairs
        lo, hi = self.sigma_range
        sigma = log_uniform(size, lo, hi, generator).to(self.trainer.device)
        eps = torch.randn((size, *self.shape), generator=generator, dtype=x_w.dtype)
        return {
            "x_w": x_w[idx],
            "x_l": x_l[idx],
            "labels": None if labels is None else labels[idx],
            "sigma": sigma,
            "eps": eps.to(self.trainer.device),
        }

    @property
    def method(self) -> dict[str, Any]:
        return self.trainer.config["method"]

    def _new_round(self, generator: torch.Generator) -> None:
        """Sample a round with the current network and score it: rewards, advantages (DDPO, DPOK)
        or Bradley-Terry pairs (D3PO), the base model's log-probabilities or means; then the
        minibatch order of its inner epochs."""
        m, n = self.method, self.round_size
        policy = self.policy(self.trainer.net)
        count = 2 * n if self.kind == "d3po" else n
        traj, labels, reward_labels = self._sample(policy, count, generator, self.kind == "d3po")
        reward = self.reward(traj.xs[-1], reward_labels).detach()
        cond = _cond(labels)
        keys = torch.zeros(count, dtype=torch.long) if labels is None else labels.cpu()
        state: dict[str, Any] = {"labels": labels, "reward": reward}
        with torch.no_grad(), self.reference() as ref:
            if self.kind == "ddpo":
                base_lp = (
                    log_probs(self.sampler, ref, traj, cond=cond, **self.options)
                    if self.beta
                    else None
                )
                penalized = kl_penalized_reward(reward, traj.log_probs, base_lp, self.beta)
                adv = self.stats.advantages(penalized, keys)
                state["advantages"] = adv.clamp(-m["adv_clip"], m["adv_clip"])
            elif self.kind == "dpok":
                state["base_means"] = transition_means(
                    self.sampler, ref, traj, cond=cond, **self.options
                )
                kl = path_kl(traj.means, state["base_means"], traj.stds)
                state["advantages"] = self.stats.advantages(
                    reward - self.beta * kl, keys, scale=False
                )
            else:  # d3po: pair i is (i, n + i); winners first
                first = bradley_terry(reward[:n], reward[n:], generator).to(reward.device)
                i = torch.arange(n, device=reward.device)
                order = torch.cat([torch.where(first, i, i + n), torch.where(first, i + n, i)])
                traj = _rows(traj, order)
                state["labels"] = None if labels is None else labels[order]
                state["reward"] = reward[order]
                state["ref_log_probs"] = log_probs(
                    self.sampler, ref, traj, cond=_cond(state["labels"]), **self.options
                )
        state["trajectory"] = traj
        self.round = state
        perms = [torch.randperm(n, generator=generator) for _ in range(m["inner_epochs"])]
        self.schedule, self.position = torch.cat(perms), 0

    def losses(self, network: nn.Module, batch: dict[str, Any], rows: Tensor) -> Tensor:
        """The method's per-sample losses of the batch's ``rows``."""
        if self.kind in ON_POLICY:
            return self._on_policy(network, batch["idx"][rows])
        if self.kind == "draft":
            return self._draft(network, batch, rows)
        return self._dpo(network, batch, rows)

    def _on_policy(self, network: nn.Module, idx: Tensor) -> Tensor:
        r, policy = self.round, self.policy(network)
        traj, stochastic = r["trajectory"], r["trajectory"].stochastic
        self._log("reward", r["reward"])
        if self.kind == "d3po":
            n = self.round_size
            both = torch.cat([idx, idx + n]).to(traj.xs.device)
            labels = None if r["labels"] is None else r["labels"][both]
            lp = log_probs(
                self.sampler, policy, _rows(traj, both), cond=_cond(labels), **self.options
            )
            ref, b = r["ref_log_probs"][:, both], len(idx)
            return d3po_loss(
                lp[:, :b],
                ref[:, :b],
                lp[:, b:],
                ref[:, b:],
                self.beta,
                stochastic,
                self.method["clip"],
            )
        idx = idx.to(traj.xs.device)
        part = _rows(traj, idx)
        labels = None if r["labels"] is None else r["labels"][idx]
        cond, adv, m = _cond(labels), r["advantages"][idx], self.method
        if self.kind == "ddpo":
            lp = log_probs(self.sampler, policy, part, cond=cond, **self.options)
            self._log("ratio", (lp - part.log_probs)[stochastic].exp())
            return ppo_loss(lp, part.log_probs, adv, m["clip"], stochastic)
        now = replay(self.sampler, policy, part, cond=cond, **self.options)
        lp = now.log_probs
        kl = step_kl(now.means, r["base_means"][:, idx], part.stds)
        self._log("kl", kl.sum(0))
        return dpok_loss(lp, part.log_probs, adv, kl, self.beta, m["clip"], stochastic)

    def _draft(self, network: nn.Module, batch: dict[str, Any], rows: Tensor) -> Tensor:
        m, k = self.method, batch["k"]
        sigma_from = float(self.sigmas[len(self.sigmas) - 1 - k])
        policy = self.policy(network)
        # copies: the batch's generators stay unused
        gens = [torch.Generator().set_state(batch["gens"][i].get_state()) for i in rows.tolist()]
        labels, reward_labels = (
            None if batch[key] is None else batch[key][rows.to(batch[key].device)]
            for key in ("labels", "reward_labels")
        )
        cond = _cond(labels)
        traj = trajectory(
            self.sampler,
            truncated(policy, sigma_from, m["checkpoint"]),
            batch["x"][rows.to(batch["x"].device)],
            self.sigmas,
            generator=gens,
            cond=cond,
            **self.options,
        )
        reward = self.reward(traj.xs[-1], reward_labels)
        self._log("reward", reward)
        kl = None
        if self.beta:  # every step's KL, through the states of the last K (truncated as r is)
            means = transition_means(
                self.sampler,
                truncated(policy, math.inf, m["checkpoint"]),
                traj,
                cond=cond,
                **self.options,
            )
            with self.reference() as ref:
                base = truncated(ref, sigma_from, use_checkpoint=False)
                base_means = transition_means(self.sampler, base, traj, cond=cond, **self.options)
            kl = path_kl(means, base_means, decoder_stds(traj.stds, traj.sigmas))
            self._log("kl", kl)
        return draft_loss(reward, kl, self.beta)

    def _dpo(self, network: nn.Module, batch: dict[str, Any], rows: Tensor) -> Tensor:
        device = self.trainer.device
        b = {k: None if v is None else v[rows.to(v.device)] for k, v in batch.items()}
        x0 = torch.cat([b["x_w"], b["x_l"]]).to(device)
        eps, sigma = torch.cat([b["eps"], b["eps"]]), torch.cat([b["sigma"], b["sigma"]])
        labels = None if b["labels"] is None else torch.cat([b["labels"], b["labels"]]).to(device)
        size = math.prod(self.shape)

        def errors(denoiser: Any) -> tuple[Tensor, Tensor]:
            e = denoising_loss(denoiser, x0, eps, sigma.to(x0.dtype), "snr", **_cond(labels)) * size
            return e[: len(rows)], e[len(rows) :]

        e_w, e_l = errors(self.policy(network))
        with torch.no_grad(), self.reference() as ref:
            r_w, r_l = errors(ref)
        weight = elbo_weight(*self.sigma_range)
        self._log("margin", -weight * ((e_w - r_w) - (e_l - r_l)).detach())
        return diffusion_dpo_loss(e_w, r_w, e_l, r_l, self.beta, weight)

    def _pairs(self, method: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor | None]:
        """DPO's pairs (x_w, x_l, labels): method.data, or drawn from the base model once (labels
        by Bradley-Terry from the reward) and kept in the run folder as pairs.safetensors."""
        device = self.trainer.device
        if method["data"]:
            return self._read_pairs(Path(method["data"]))
        path = self.trainer.run_dir / "pairs.safetensors"
        n = method["pairs"]
        if path.exists():
            t = load_weights(path, device)
            if len(t["x_w"]) != n:
                raise ValueError(
                    f"{path} holds {len(t['x_w'])} pairs but method.pairs is {n}: delete it to "
                    "draw new pairs, or start a new run folder"
                )
            return t["x_w"], t["x_l"], t.get("labels")
        g = torch.Generator().manual_seed(self.trainer.config["run"]["seed"] + 3)
        chunks: dict[str, list[Tensor]] = {"x_w": [], "x_l": [], "labels": []}
        for lo in range(0, n, self.round_size):
            count = min(self.round_size, n - lo)
            traj, labels, reward_labels = self._sample(self.base, 2 * count, g, pairs=True)
            x, half = traj.xs[-1], slice(0, count)
            r = self.reward(x, reward_labels)
            first = bradley_terry(r[half], r[count:], g).to(x.device)[:, None]
            first = first.view(-1, *[1] * len(self.shape))
            chunks["x_w"].append(torch.where(first, x[half], x[count:]))
            chunks["x_l"].append(torch.where(first, x[count:], x[half]))
            if labels is not None:
                chunks["labels"].append(labels[half])
        pairs = {k: torch.cat(v) for k, v in chunks.items() if v}
        if self.trainer.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_weights(path, {k: v.cpu() for k, v in pairs.items()})
        return pairs["x_w"], pairs["x_l"], pairs.get("labels")

    def _read_pairs(self, path: Path) -> tuple[Tensor, Tensor, Tensor | None]:
        if not path.is_file():
            raise FileNotFoundError(f"method.data {path} does not exist (an .npz with x_w and x_l)")
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        missing = [k for k in ("x_w", "x_l") if k not in arrays]
        if missing:
            raise ValueError(
                f"{path} has no {' or '.join(missing)} (pairs x_w, x_l [P, ...], labels [P])"
            )
        x_w, x_l = (torch.as_tensor(arrays[k], dtype=torch.float32) for k in ("x_w", "x_l"))
        if x_w.shape != x_l.shape or tuple(x_w.shape[1:]) != self.shape or not len(x_w):
            raise ValueError(
                f"{path}: x_w {list(x_w.shape)} and x_l {list(x_l.shape)} must both be [P, "
                f"{', '.join(map(str, self.shape))}] for this model"
            )
        labels = None
        if self.num_classes:
            labels = torch.as_tensor(arrays.get("labels", np.full(len(x_w), -1)), dtype=torch.long)
            if labels.shape != (len(x_w),):
                raise ValueError(
                    f"{path}: labels must be one per pair, got shape {list(labels.shape)}"
                )
        device = self.trainer.device
        return x_w.to(device), x_l.to(device), None if labels is None else labels.to(device)

    # ------------------------------------------------------------------ records

    def _log(self, key: str, values: Tensor) -> None:
        """Accumulate the mean of ``values`` over the step's micro-batches for its record."""
        total, count = self.logged.get(key, 0.0), self.logged.get(f"{key}#", 0.0)
        self.logged[key] = total + float(values.detach().double().sum())
        self.logged[f"{key}#"] = count + values.numel()

    def fields(self, stats: dict[str, float]) -> dict[str, Any]:
        return {
            k: self.logged[k] / self.logged[f"{k}#"] for k in self.logged if not k.endswith("#")
        }

    def evaluate(self, step: int) -> dict[str, float]:
        """Every run.eval_every steps: the mean reward of run.eval_n samples of the current model
        from fixed seeds."""
        every = self.trainer.config["run"]["eval_every"]
        if not every or step % every:
            return {}
        g = torch.Generator().manual_seed(self.trainer.config["run"]["seed"] + 2)
        model = self.trainer.ema.model  # what export writes
        traj, _, reward_labels = self._sample(
            self.policy(model), self.trainer.config["run"]["eval_n"], g
        )
        return {"eval_reward": float(self.reward(traj.xs[-1], reward_labels).double().mean())}

    def describe(self) -> str:
        total = models.parameter_count(self.trainer.net)
        trained = sum(p.numel() for p in self.trained)
        how = (
            f"LoRA ({trained:,} of {total:,} parameters)"
            if self.lora
            else f"all {total:,} parameters"
        )
        return f"{self.kind} on {self.base_ref}, reward {self.reward.name}: {how}"

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        if self.kind in ON_POLICY:
            r = self.round
            if r is not None:
                t = r["trajectory"]
                r = {**r, "trajectory": [t.sigmas, t.xs, t.means, t.stds, t.log_probs, t.nfe]}
            return {
                "round": r,
                "schedule": self.schedule,
                "position": self.position,
                "stats": self.stats.state_dict(),
            }
        if self.kind == "dpo":
            return {"order": self.order.state_dict()}
        return {}

    def load_state_dict(self, state: dict[str, Any], checkpoint: Checkpoint) -> None:
        if self.kind in ON_POLICY:
            r = state["round"]
            if r is not None:
                device = self.trainer.device
                r = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in r.items()}
                sigmas, xs, means, stds, lps, nfe = r["trajectory"]
                r["trajectory"] = Trajectory(
                    sigmas, xs.to(device), means.to(device), stds, lps.to(device), nfe
                )
            self.round, self.schedule, self.position = r, state["schedule"], int(state["position"])
            self.stats.load_state_dict(state["stats"])
        if self.kind == "dpo":
            self.order.load_state_dict(state["order"])

    # ------------------------------------------------------------------ export

    def export(self) -> list[Path]:
        """``model/``: the fine-tuned model folder (full fine-tuning) or its adapter folder, and
        ``model_merged/`` with lora.merge."""
        t = self.trainer
        net = t.ema.model
        record = {
            "method": self.method,
            "reward": self.reward.name,
            "base": self.base_ref,
            "base_digest": self.base_digest,
            "steps": t.step,
        }
        training = t.record
        if not self.lora:
            return [self._save_model(t.run_dir / "model", net, record, training)]
        out = [
            save_adapter(
                t.run_dir / "model",
                net,
                self.base_ref,
                self.base_digest,
                {"finetune": record, "training": training},
            )
        ]
        if t.config["lora"]["merge"]:
            merged = copy.deepcopy(net)
            merge_lora(merged)
            out.append(self._save_model(t.run_dir / "model_merged", merged, record, training))
        return out

    def _save_model(self, folder: Path, net: nn.Module, record: dict, training: dict) -> Path:
        base = self.model.config
        config = diffusion_config(
            net,
            self.parameterization,
            data=base["data"],
            sample=base.get("sample", {}),
            null_class=bool(base["null_class"]),
            objective=base.get("objective", {}),
            training=training,
            extra={"finetune": record},
        )
        return save_folder(folder, config, net.state_dict())


def finetune(
    model: Any,
    config: str | Path | dict[str, Any],
    overrides: list[str] | tuple[str, ...] = (),
    run_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    reward: Any = None,
) -> Trainer:
    """Fine-tune a saved diffusion model by the config (a TOML/JSON file or a dict over
    :data:`DEFAULTS`) with ``section.key=value`` overrides, resuming the run's latest checkpoint;
    writes ``model/`` (and ``model_merged/``). ``model``: the base model or what loads the one
    [base] model names (``difflab.load``); ``reward``: a Python callable instead of [reward] name.
    Returns the trainer (``trainer.exported``: the folders written)."""
    return run(FinetuneTask(model, reward), config, overrides, run_dir, resume, progress)
