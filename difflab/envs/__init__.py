"""Layer 3: batched control environments for policies, and demonstrations from scripted experts.

    env = difflab.envs.make("metaworld/reach")     # or "toy/obstacle"
    obs = env.reset(seeds)                         # [N, obs_dim]; episode i depends on seeds[i] only
    step = env.step(actions)                       # [N, act_dim] in [-1, 1] -> observations, rewards,
                                                   # success, done
    demos = rollout(env, env.expert(), seeds)      # Demos: the episodes, recorded
    collect("metaworld/reach", 50, seed=0).demos.save("demos.npz")

MetaWorld needs the optional extra ``policy``; ``toy/obstacle`` is pure torch.
"""

from difflab.envs.base import BatchedEnv, Policy, Step, episode_seeds, generator
from difflab.envs.collect import Collected, collect
from difflab.envs.obstacle import ObstacleDemonstrator, ObstacleEnv
from difflab.envs.registry import NAMES, make
from difflab.envs.rollout import rollout

__all__ = [
    "NAMES",
    "BatchedEnv",
    "Collected",
    "ObstacleDemonstrator",
    "ObstacleEnv",
    "Policy",
    "Step",
    "collect",
    "episode_seeds",
    "generator",
    "make",
    "rollout",
]
