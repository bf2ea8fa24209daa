"""Environments by name: ``make("metaworld/reach")``, ``make("toy/obstacle")``."""

from __future__ import annotations

from difflab.envs.base import BatchedEnv
from difflab.envs.obstacle import ObstacleEnv
from difflab.utils.names import unknown_name

__all__ = ["NAMES", "make"]

NAMES = ("metaworld/TASK", "toy/obstacle")  # TASK: any MetaWorld task, e.g. reach or reach-v3


def make(name: str, max_steps: int | None = None) -> BatchedEnv:
    """The batched environment called ``name`` (see NAMES), its episodes cut after ``max_steps``
    steps (default: the task's own limit); an unknown name is a ValueError naming the nearest."""
    if not isinstance(name, str):
        raise unknown_name("environment", name, NAMES)
    family, _, task = name.partition("/")
    if family == "metaworld" and task:
        from difflab.envs.metaworld import MetaWorldEnv

        return MetaWorldEnv(task, max_steps)
    if name == "toy/obstacle":
        return ObstacleEnv() if max_steps is None else ObstacleEnv(max_steps)
    raise unknown_name("environment", name, NAMES)
