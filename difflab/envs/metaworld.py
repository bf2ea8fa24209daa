"""``metaworld/TASK``: the 50 MetaWorld manipulation tasks (Yu et al. 2019, the ``metaworld`` package,
MuJoCo), state observations, N environments stepped together, and MetaWorld's scripted experts.

Needs the optional extra ``policy`` (``pip install -c constraints.txt 'difflab[policy]'``); metaworld
is imported when an environment is made, so difflab works without it.

Each row is one MetaWorld environment of the task, goal observable (39-D observations whose last 3
entries are the goal, as in MetaWorld's MT1 benchmark) and re-seeded at every reset: episode i
draws its object and goal positions from ``seeds[i]`` alone (``env.seed(s)`` then a fresh
random vector from that seed), so it does not depend on N or on the episodes before it. The rows
step one after another (a MuJoCo step costs about 0.3 ms); the policy sees all N observations at
once. Success is MetaWorld's own ``info["success"]``; an episode ends at its first success or after
``max_steps`` steps (MetaWorld's ``max_path_length``, 500, by default).
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from difflab.envs.base import BatchedEnv

__all__ = ["EXTRA", "MetaWorldEnv", "MetaWorldExpert", "task_name", "tasks"]

EXTRA = "pip install -c constraints.txt 'difflab[policy]'"
VERSION = "-v3"  # MetaWorld 3 names every task NAME-v3


def _metaworld() -> Any:
    """The metaworld package, or an ImportError naming the optional extra."""
    try:
        import metaworld
        import metaworld.policies
    except ImportError as e:
        raise ImportError(
            f"MetaWorld environments need the optional extra 'policy': {EXTRA} "
            f"(importing metaworld failed: {e})"
        ) from None
    return metaworld


def tasks() -> list[str]:
    """MetaWorld's task names, as it spells them ("reach-v3", ...)."""
    return list(_metaworld().env_dict.ALL_V3_ENVIRONMENTS)


def task_name(task: str) -> str:
    """MetaWorld's name of ``task``, given with or without its version suffix ("reach" ->
    "reach-v3"); an unknown task is a ValueError naming the nearest ones."""
    names = tasks()
    name = task if task.endswith(VERSION) else task + VERSION
    if name not in names:
        short = sorted(n.removesuffix(VERSION) for n in names)
        near = difflib.get_close_matches(task.removesuffix(VERSION), short, n=3, cutoff=0.4)
        hint = f"; nearest: {', '.join(near)}" if near else ""
        raise ValueError(
            f"unknown MetaWorld task {task!r}{hint} (all {len(names)}: {', '.join(short)})"
        )
    return name


class MetaWorldExpert:
    """MetaWorld's scripted policy for the task (``metaworld.policies``), applied row by row:
    a_i = expert(o_i) for each of the N observations (Yu et al. 2019)."""

    def __init__(self, task: str) -> None:
        policy = _metaworld().policies.ENV_POLICY_MAP[task]
        self._policy = policy()
        self.name = f"metaworld.policies.{policy.__name__}"

    def reset(self, seeds: Sequence[int]) -> None:
        """Nothing to draw: the experts are deterministic."""

    def __call__(self, observations: Tensor) -> Tensor:
        rows = observations.detach().to("cpu", torch.float64).numpy()
        with warnings.catch_warnings():  # the experts' gains exceed 1; the env clips to [-1, 1]
            warnings.filterwarnings("ignore", "Constant\\(s\\) may be too high", UserWarning)
            actions = [self._policy.get_action(row) for row in rows]
        return torch.from_numpy(np.stack(actions).astype(np.float64))


class MetaWorldEnv(BatchedEnv):
    """N MetaWorld environments of one task (see the module docstring): (o_{t+1}, r_t, success) =
    MuJoCo step of a_t, episodes seeded one by one (Yu et al. 2019)."""

    act_dim = 4

    def __init__(self, task: str, max_steps: int | None = None) -> None:
        super().__init__()
        self.task = task_name(task)
        self.name = f"metaworld/{self.task}"
        self._cls = _metaworld().env_dict.ALL_V3_ENVIRONMENTS[self.task]
        self._envs = [self._make()]
        limit = self._envs[0].max_path_length
        self.max_steps = limit if max_steps is None else max_steps
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        self.obs_dim = int(self._envs[0].sawyer_observation_space.shape[0])
        self._observations = torch.zeros(0, self.obs_dim, dtype=torch.float64)

    def _make(self) -> Any:
        """One environment of the task, goal observable, drawing positions from its own seed."""
        env = self._cls()
        env._partially_observable = False  # the goal is part of the observation (MT1's setting)
        env.__dict__.pop("sawyer_observation_space", None)  # a cached property of the flag above
        env._set_task_called = True
        env._freeze_rand_vec = False  # a new random vector at every reset ...
        env.seeded_rand_vec = True  # ... drawn from env.np_random, which seed() sets
        return env

    def _reset(self, seeds: list[int]) -> Tensor:
        while len(self._envs) < len(seeds):
            self._envs.append(self._make())
        rows = []
        for env, seed in zip(self._envs, seeds):
            env.max_path_length = self.max_steps
            env.seed(seed)
            rows.append(env.reset()[0])
        self._observations = torch.from_numpy(np.stack(rows).astype(np.float64))
        return self._observations.clone()

    def _advance(self, actions: Tensor, active: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n = self.num_envs
        rewards = torch.zeros(n, dtype=torch.float64)
        success = torch.zeros(n, dtype=torch.bool)
        commands = actions.to(torch.float32).numpy()  # MetaWorld's action space is float32
        for i in torch.nonzero(active).flatten().tolist():
            obs, reward, _, _, info = self._envs[i].step(commands[i])
            self._observations[i] = torch.from_numpy(np.asarray(obs, dtype=np.float64))
            rewards[i] = float(reward)
            success[i] = bool(info["success"])
        return self._observations.clone(), rewards, success, torch.zeros(n, dtype=torch.bool)

    def expert(self) -> MetaWorldExpert:
        return MetaWorldExpert(self.task)
