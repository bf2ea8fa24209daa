"""The scripted experts behind `difflab policy collect`: success rate, episode length, cost per step.

    .venv/bin/python benchmarks/experts.py                       # the five tasks + toy/obstacle
    .venv/bin/python benchmarks/experts.py --envs metaworld/push --episodes 100

Per environment: the expert's success rate over the seeded episodes of `difflab policy collect`
(episode i from (--seed, i)) with its standard error, the mean episode length (episodes end at their
first success or at the task's step limit), milliseconds per environment step and per expert action
(one row each, environments already built), and the mode split where the task names modes.
Needs the `policy` extra for MetaWorld.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from difflab.envs import episode_seeds, make, rollout

DEFAULT_ENVS = (
    "metaworld/reach",
    "metaworld/button-press-topdown",
    "metaworld/drawer-close",
    "metaworld/push",
    "metaworld/pick-place",
    "toy/obstacle",
)


class Timed:
    """A policy that counts the seconds spent in it."""

    def __init__(self, policy):
        self.policy, self.name, self.seconds = policy, policy.name, 0.0

    def reset(self, seeds):
        self.policy.reset(seeds)

    def __call__(self, observations):
        start = time.perf_counter()
        actions = self.policy(observations)
        self.seconds += time.perf_counter() - start
        return actions


def measure(name: str, episodes: int, seed: int, num_envs: int) -> dict:
    env = make(name)
    seeds = episode_seeds(seed, episodes)
    env.reset(seeds[:num_envs])  # build every environment before the clock starts
    expert = Timed(env.expert())
    start = time.perf_counter()
    demos = rollout(env, expert, seeds, num_envs=num_envs)
    seconds = time.perf_counter() - start
    rate = demos.success.double().mean().item()
    row = {
        "env": demos.env,
        "success": rate,
        "se": math.sqrt(rate * (1 - rate) / episodes),
        "length": demos.lengths.double().mean().item(),
        "ms_env": 1e3 * (seconds - expert.seconds) / demos.steps,
        "ms_expert": 1e3 * expert.seconds / demos.steps,
        "modes": "",
    }
    if env.mode_names:
        counts = torch.bincount(demos.modes[demos.modes >= 0], minlength=len(env.mode_names))
        row["modes"] = ", ".join(
            f"{m} {c / episodes:.2f}" for m, c in zip(env.mode_names, counts.tolist())
        )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--envs", nargs="+", default=DEFAULT_ENVS)
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-envs", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(
        f"{args.episodes} episodes per environment, seed {args.seed}, {args.num_envs} at a time\n"
    )
    print(
        "| environment | expert success | mean length | ms / env step | ms / expert action | modes |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.envs:
        r = measure(name, args.episodes, args.seed, args.num_envs)
        print(
            f"| {r['env']} | {r['success']:.2f} ± {r['se']:.2f} | {r['length']:.1f} | "
            f"{r['ms_env']:.3f} | {r['ms_expert']:.3f} | {r['modes']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
