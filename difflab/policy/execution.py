"""Executing a policy in N environments at once (the :class:`difflab.envs.Policy` protocol):
receding-horizon action chunks (Chi et al. 2023) and streaming denoising (Høeg et al. 2024).

Receding horizon. The policy keeps each environment's last To observations (the first one repeated
at the start of an episode, as :meth:`difflab.data.Demos.windows` pads them); when its queue of
actions is empty it samples a chunk a_{t-To+1 .. t-To+H} for all N environments in one batched call,
queues the entries To - 1 .. To + Ta - 2 (the current step and the Ta - 1 after it, as the windows
align them) and then replans. Row i's noise comes from ``generator(seeds[i], 2)``, so an episode does
not depend on the others in its batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from difflab.envs.base import generator
from difflab.policy.model import PolicyModel

__all__ = ["RecedingHorizon", "executed"]


def executed(chunk: Tensor, obs_horizon: int, action_horizon: int) -> Tensor:
    """The actions of a chunk [N, H, A] that are executed: entries To - 1 .. To + Ta - 2 (the
    chunk starts with the history; Chi et al. 2023) -> [N, Ta, A]."""
    return chunk[:, obs_horizon - 1 : obs_horizon - 1 + action_horizon]


class RecedingHorizon:
    """pi(o_t) for N environments: execute Ta actions of each sampled chunk, then replan (Chi et
    al. 2023); ``options`` go to :meth:`PolicyModel.chunks` (sampler, steps, schedule, guidance).
    Counts the chunks sampled and the seconds spent in the policy."""

    def __init__(self, model: PolicyModel, action_horizon: int | None = None, **options: Any):
        self.model, self.options = model, options
        h = model.horizons
        self.action_horizon = int(action_horizon or h["action"])
        if not 1 <= self.action_horizon <= h["pred"] - h["obs"] + 1:
            raise ValueError(
                f"action_horizon must lie in [1, {h['pred'] - h['obs'] + 1}], got {action_horizon}"
            )
        self.name = f"difflab.policy ({model.method})"
        self.history = torch.zeros(0)
        self.queue: list[Tensor] = []
        self.generators: list[torch.Generator] = []
        self.chunks_sampled, self.seconds = 0, 0.0

    def reset(self, seeds: Sequence[int]) -> None:
        self.generators = [generator(int(s), 2) for s in seeds]
        self.history = torch.zeros(0)
        self.queue = []

    def __call__(self, observations: Tensor) -> Tensor:
        start = time.perf_counter()
        obs = observations.to(torch.float32)[:, None]
        to = self.model.horizons["obs"]
        if self.history.numel() == 0:
            self.history = obs.expand(-1, to, -1).clone()
        else:
            self.history = torch.cat([self.history[:, 1:], obs], 1)
        if not self.queue:
            chunk = self.model.chunks(self.history, generator=self.generators, **self.options)
            self.queue = list(executed(chunk.cpu(), to, self.action_horizon).unbind(1))
            self.chunks_sampled += 1
        action = self.queue.pop(0).to(torch.float64)
        self.seconds += time.perf_counter() - start
        return action
