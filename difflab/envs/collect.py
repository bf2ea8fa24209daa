"""Demonstrations from an environment's scripted expert: ``collect("metaworld/reach", 50, seed=0)``."""

from __future__ import annotations

import sys
import time
from typing import NamedTuple

from tqdm import tqdm

from difflab.data.demos import Demos
from difflab.envs.base import episode_seeds
from difflab.envs.registry import make
from difflab.envs.rollout import rollout

__all__ = ["Collected", "collect"]


class Collected(NamedTuple):
    """What :func:`collect` returns: the kept episodes, and the expert's record over all it ran."""

    demos: Demos
    episodes: int  # episodes run
    successes: int  # of them, successful
    steps: int  # steps of all episodes run
    seconds: float  # wall time of the rollouts (environments built included)

    @property
    def success_rate(self) -> float:
        """The expert's success rate, successes / episodes."""
        return self.successes / self.episodes


def collect(
    env_name: str,
    episodes: int,
    seed: int = 0,
    *,
    keep_failures: bool = False,
    max_steps: int | None = None,
    num_envs: int = 16,
    progress: bool = False,
) -> Collected:
    """Run the environment's scripted expert for ``episodes`` episodes, episode i seeded by
    :func:`~difflab.envs.base.episode_seeds` (seed, i); keep the successful ones (all of them
    with ``keep_failures``). Demonstrations by a scripted policy, as in Diffusion Policy's
    MetaWorld-style benchmarks (Chi et al. 2023)."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    env = make(env_name, max_steps)
    seeds = episode_seeds(seed, episodes)
    with tqdm(
        total=episodes,
        desc=f"{env.name} expert",
        unit="episode",
        file=sys.stderr,
        disable=not progress,
    ) as bar:
        start = time.perf_counter()
        demos = rollout(env, env.expert(), seeds, num_envs=num_envs, on_episodes=bar.update)
        seconds = time.perf_counter() - start
    successes, steps = int(demos.success.sum()), demos.steps
    if not keep_failures:
        if not successes:
            raise ValueError(
                f"the expert of {env.name} succeeded in none of {episodes} episodes: nothing to "
                "keep (keep_failures, --keep-failures on the command line, keeps failed episodes)"
            )
        demos = demos.subset(demos.success)
    return Collected(demos, episodes, successes, steps, seconds)
