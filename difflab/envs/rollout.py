"""Run a policy in a batched environment and record its episodes as :class:`~difflab.data.demos.Demos`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from difflab.data.demos import Demos
from difflab.envs.base import BatchedEnv, Policy

__all__ = ["rollout"]


def rollout(
    env: BatchedEnv,
    policy: Policy,
    seeds: Sequence[int],
    *,
    num_envs: int = 16,
    on_episodes: Callable[[int], None] | None = None,
) -> Demos:
    """Episode i from ``seeds[i]``, acted on by ``policy``, a_t = policy(o_t) clipped to [-1, 1];
    ``num_envs`` episodes at a time, one batched policy call per step.

    Records (o_t, a_t, r_t) up to each episode's end, its success and mode. ``on_episodes(k)`` is
    called whenever k more episodes have ended (for a progress bar). An episode depends on its seed
    alone, not on ``num_envs``, when the policy's action for a row depends on that row alone.
    """
    if not seeds:
        raise ValueError("rollout needs at least one episode seed")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    parts = []
    for begin in range(0, len(seeds), num_envs):
        batch = [int(s) for s in seeds[begin : begin + num_envs]]
        observations = env.reset(batch)
        policy.reset(batch)
        seen, taken, earned, alive = [], [], [], []
        done = torch.zeros(len(batch), dtype=torch.bool)
        while not bool(done.all()):
            actions = env.clip(policy(observations))
            step = env.step(actions)
            seen.append(observations)
            taken.append(actions)
            earned.append(step.rewards)
            alive.append(~done)
            ended = int((step.done & ~done).sum())
            if on_episodes is not None and ended:
                on_episodes(ended)
            observations, done = step.observations, step.done
        mask = torch.stack(alive, 1)  # [N, T]: the steps each episode took
        parts.append(
            Demos(
                observations=torch.stack(seen, 1)[mask],
                actions=torch.stack(taken, 1)[mask],
                rewards=torch.stack(earned, 1)[mask],
                lengths=mask.sum(1),
                success=step.success,
                seeds=torch.tensor(batch),
                modes=env.modes(),
                env=env.name,
                policy=policy.name,
            )
        )
    return Demos.concat(parts)
