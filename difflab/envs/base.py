"""The common interface of batched control environments: N episodes stepped together.

    obs = env.reset(seeds)                # [N, obs_dim] float64, N = len(seeds)
    step = env.step(actions)              # actions [N, act_dim], clipped to [-1, 1]
    step.observations, step.rewards, step.success, step.done     # [N, obs_dim], [N], [N], [N]

Episode i is a function of ``seeds[i]`` alone (and of the actions it is given): it does not depend
on N or on the other rows, so a rollout is reproducible and can be batched any way. An episode ends
at its first success, at a failure (for example a collision), or after ``max_steps`` steps; a row
that has ended is frozen (same observation, reward 0, done) while the others go on.

A policy is anything with ``reset(seeds)`` and ``policy(observations) -> actions``: it is called once
per step with all N observations (ended rows included, their actions ignored), so a network
evaluates the whole batch in one call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ACTION_HIGH",
    "ACTION_LOW",
    "BatchedEnv",
    "Policy",
    "Step",
    "episode_seeds",
    "generator",
]

ACTION_LOW, ACTION_HIGH = -1.0, 1.0  # every environment's actions lie in [-1, 1]^act_dim
NO_MODE = -1  # modes(): the episode took none of the named modes (yet)


class Step(NamedTuple):
    """What one step of N environments returns: observations [N, obs_dim] float64, rewards [N]
    float64, success [N] bool (the episode has succeeded), done [N] bool (the episode has ended)."""

    observations: Tensor
    rewards: Tensor
    success: Tensor
    done: Tensor


class Policy(Protocol):
    """Acts in N environments at once: ``reset(seeds)`` at the start of N episodes, then
    ``policy(observations [N, obs_dim]) -> actions [N, act_dim]`` once per step.

    A stochastic policy keeps its episodes independent of N by drawing row i's noise from its own
    generator, ``generator(seeds[i], 2)``."""

    name: str

    def reset(self, seeds: Sequence[int]) -> None: ...

    def __call__(self, observations: Tensor) -> Tensor: ...


def episode_seeds(seed: int, episodes: int) -> list[int]:
    """The seed of episode i of run ``seed``: 63 bits of numpy SeedSequence(seed)'s spawned child
    i, so different (seed, i) pairs get unrelated episodes (runs with seeds 0 and 1 share none)."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    children = np.random.SeedSequence(seed).spawn(episodes)
    return [int(child.generate_state(1, np.uint64)[0] >> np.uint64(1)) for child in children]


def generator(seed: int, stream: int) -> torch.Generator:
    """A torch generator for one random stream of an episode (stream 0: the environment, 1: its
    scripted expert, 2 and up: free for a policy), independent of every other (seed, stream)."""
    state = np.random.SeedSequence(seed, spawn_key=(stream,)).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))


class BatchedEnv(ABC):
    """N episodes of one control task stepped together (see the module docstring).

    Subclasses set ``name``, ``obs_dim``, ``act_dim``, ``max_steps`` (and ``mode_names`` when the
    task has distinct ways of solving it) and implement :meth:`_reset`, :meth:`_advance` and
    :meth:`expert`; this class keeps the step counts, success and done flags.
    """

    name: str
    obs_dim: int
    act_dim: int
    max_steps: int
    mode_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._steps = torch.zeros(0, dtype=torch.long)
        self._success = torch.zeros(0, dtype=torch.bool)
        self._done = torch.zeros(0, dtype=torch.bool)

    @property
    def num_envs(self) -> int:
        """N, the number of episodes since the last :meth:`reset`."""
        return len(self._done)

    def reset(self, seeds: Sequence[int]) -> Tensor:
        """Start N = len(seeds) episodes, episode i from ``seeds[i]``; their first observations."""
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("reset needs at least one seed")
        if min(seeds) < 0 or max(seeds) >= 2**63:
            raise ValueError(f"episode seeds must lie in [0, 2^63), got {min(seeds)}..{max(seeds)}")
        n = len(seeds)
        self._steps = torch.zeros(n, dtype=torch.long)
        self._success = torch.zeros(n, dtype=torch.bool)
        self._done = torch.zeros(n, dtype=torch.bool)
        return self._reset(seeds)

    def clip(self, actions: Tensor) -> Tensor:
        """``actions`` [N, act_dim] as float64 clipped to [-1, 1], after checking their shape and
        that they are finite (ValueError otherwise)."""
        shape = (self.num_envs, self.act_dim)
        if tuple(actions.shape) != shape:
            raise ValueError(
                f"{self.name}: expected actions {list(shape)}, got {list(actions.shape)}"
            )
        if not bool(torch.isfinite(actions).all()):
            raise ValueError(f"{self.name}: actions contain NaN or inf")
        return actions.detach().to("cpu", torch.float64).clamp(ACTION_LOW, ACTION_HIGH)

    def step(self, actions: Tensor) -> Step:
        """Advance every episode that has not ended by one step of ``actions`` [N, act_dim]."""
        if not self.num_envs:
            raise ValueError(f"{self.name}: call reset(seeds) before step")
        actions = self.clip(actions)
        active = ~self._done
        observations, rewards, success, failed = self._advance(actions, active)
        self._steps += active.long()
        self._success |= success & active
        self._done |= active & (self._success | failed | (self._steps >= self.max_steps))
        rewards = torch.where(active, rewards.to(torch.float64), 0.0)
        return Step(observations, rewards, self._success.clone(), self._done.clone())

    def modes(self) -> Tensor:
        """[N] int64: the index in ``mode_names`` of the way each episode went, -1 for none (yet)."""
        return torch.full((self.num_envs,), NO_MODE, dtype=torch.long)

    @abstractmethod
    def _reset(self, seeds: list[int]) -> Tensor:
        """Start the episodes; their observations [N, obs_dim] float64."""

    @abstractmethod
    def _advance(self, actions: Tensor, active: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Step the ``active`` [N] rows by ``actions`` [N, act_dim] (float64, in [-1, 1]), leaving
        the others as they are: (observations [N, obs_dim], rewards [N], success [N], failed [N])."""

    @abstractmethod
    def expert(self) -> Policy:
        """The task's scripted demonstrator."""
