"""``toy/obstacle``: a point must reach a goal around a disk, and its demonstrator passes left or right
with equal probability, so the demonstrations' actions are bimodal. Pure torch, vectorized over N.

The plane holds a disk obstacle of radius ``RADIUS`` at the origin; an episode starts the agent at
(0, y0), y0 ~ U[-1, -0.8], with the goal at (0, yg), yg ~ U[0.8, 1]. Observations are
(x, y, goal x, goal y); an action a in [-1, 1]^2 moves the agent by ``SPEED`` * a. Success: the agent
comes within ``GOAL_RADIUS`` of the goal without its path ever entering the disk; a collision ends the
episode as a failure. Reward 1 on the step that succeeds, else 0. Mode: the side (left, x < 0, or
right) on which the path crosses the line y = 0 through the obstacle.

Why regressing the mean action fails, provably: the task and the demonstrator's distribution are
symmetric under the reflection x -> -x, and every start lies on the axis x = 0. So for a state on the
axis, E[a | s] has zero x component; a policy that acts by that mean (behaviour cloning by mean
squared error, in the limit) keeps the agent on the axis, and the axis runs through the obstacle.
This is the failure Diffusion Policy (Chi et al. 2023, Fig. 3) shows on Push-T; a policy that samples
the action distribution picks a side and keeps it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from difflab.envs.base import NO_MODE, BatchedEnv, generator

__all__ = ["GOAL_RADIUS", "RADIUS", "SPEED", "ObstacleDemonstrator", "ObstacleEnv", "demonstration"]

RADIUS = 0.3  # obstacle disk at the origin
SPEED = 0.05  # distance moved by a unit action
GOAL_RADIUS = 0.05
START_Y, GOAL_Y = (-1.0, -0.8), (0.8, 1.0)
DETOUR_X, DETOUR_Y = (0.5, 0.8), 0.1  # the demonstrator's waypoint (side * u, 0.1), u ~ U[0.5, 0.8]
MAX_STEPS = 100  # the demonstrator needs about 45


def _uniform(g: torch.Generator, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return low + (high - low) * float(torch.rand((), generator=g, dtype=torch.float64))


def _norm(v: Tensor) -> Tensor:
    """|v| over the last axis of length 2, elementwise (no reduction kernel, so a row's value does
    not depend on the batch it is in)."""
    return torch.sqrt(v[..., 0] * v[..., 0] + v[..., 1] * v[..., 1])


def _segment_hits_disk(p: Tensor, q: Tensor) -> Tensor:
    """[N] bool: the segment p -> q passes within RADIUS of the origin, min_s |p + s (q - p)| < R."""
    d = q - p
    dd = d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]
    s = torch.where(dd > 0, -(p[:, 0] * d[:, 0] + p[:, 1] * d[:, 1]) / dd.clamp_min(1e-300), 0.0)
    closest = p + s.clamp(0, 1)[:, None] * d
    return _norm(closest) < RADIUS


def demonstration(observations: Tensor, side: Tensor, detour: Tensor) -> Tensor:
    """The demonstrator's action: a = (w - p) / SPEED, its norm capped at 1, toward the waypoint
    w = (side * detour, 0.1) while y < 0 and toward the goal after.

    observations [N, 4] (x, y, goal x, goal y), side [N] (-1 left, +1 right), detour [N] -> [N, 2].
    The two sides' actions mirror each other, so their mean has x component 0 on the axis.
    """
    position, goal = observations[:, :2], observations[:, 2:]
    waypoint = torch.stack([side * detour, torch.full_like(detour, DETOUR_Y)], dim=1)
    target = torch.where((position[:, 1] < 0)[:, None], waypoint, goal)
    velocity = (target - position) / SPEED
    return velocity / _norm(velocity).clamp_min(1.0)[:, None]


class ObstacleDemonstrator:
    """Scripted expert of ``toy/obstacle``: side ~ U{-1, +1} and detour ~ U[0.5, 0.8] per episode
    (seeded), then :func:`demonstration`; a = (w - p) / v, |a| <= 1."""

    name = "difflab.envs.obstacle.ObstacleDemonstrator"

    def __init__(self) -> None:
        self.side = torch.zeros(0, dtype=torch.float64)
        self.detour = torch.zeros(0, dtype=torch.float64)

    def reset(self, seeds: Sequence[int]) -> None:
        """Draw each episode's side and detour from its seed (stream 1)."""
        draws = []
        for seed in seeds:
            g = generator(seed, 1)
            side = 1.0 if float(torch.rand((), generator=g, dtype=torch.float64)) < 0.5 else -1.0
            draws.append((side, _uniform(g, DETOUR_X)))
        self.side, self.detour = torch.tensor(draws, dtype=torch.float64).reshape(-1, 2).unbind(1)

    def __call__(self, observations: Tensor) -> Tensor:
        return demonstration(observations.to(torch.float64), self.side, self.detour)


class ObstacleEnv(BatchedEnv):
    """``toy/obstacle`` (see the module docstring): p_{t+1} = p_t + v clip(a_t, -1, 1); success when
    |p - goal| <= r_goal before the path meets the disk |p| < R."""

    name = "toy/obstacle"
    obs_dim = 4
    act_dim = 2
    mode_names = ("left", "right")

    def __init__(self, max_steps: int = MAX_STEPS) -> None:
        super().__init__()
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.max_steps = max_steps
        self.position = torch.zeros(0, 2, dtype=torch.float64)
        self.goal = torch.zeros(0, 2, dtype=torch.float64)
        self._modes = torch.zeros(0, dtype=torch.long)

    def _observations(self) -> Tensor:
        return torch.cat([self.position, self.goal], dim=1)

    def _reset(self, seeds: list[int]) -> Tensor:
        starts = []
        for seed in seeds:
            g = generator(seed, 0)
            starts.append((_uniform(g, START_Y), _uniform(g, GOAL_Y)))
        y0, yg = torch.tensor(starts, dtype=torch.float64).unbind(1)
        zero = torch.zeros_like(y0)
        self.position = torch.stack([zero, y0], dim=1)
        self.goal = torch.stack([zero, yg], dim=1)
        self._modes = torch.full((len(seeds),), NO_MODE, dtype=torch.long)
        return self._observations()

    def _advance(self, actions: Tensor, active: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        old = self.position
        new = torch.where(active[:, None], old + SPEED * actions, old)
        collided = active & _segment_hits_disk(old, new)
        crossed = active & (old[:, 1] < 0) & (new[:, 1] >= 0) & (self._modes == NO_MODE)
        dy = new[:, 1] - old[:, 1]
        x_at_axis = old[:, 0] - old[:, 1] * (new[:, 0] - old[:, 0]) / torch.where(crossed, dy, 1.0)
        self._modes = torch.where(crossed, (x_at_axis > 0).long(), self._modes)
        self.position = new
        success = active & ~collided & (_norm(new - self.goal) <= GOAL_RADIUS)
        return self._observations(), success.to(torch.float64), success, collided

    def modes(self) -> Tensor:
        return self._modes.clone()

    def expert(self) -> ObstacleDemonstrator:
        return ObstacleDemonstrator()
