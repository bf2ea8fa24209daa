"""Trajectories of stochastic samplers with each transition's Gaussian log-probability, and their
re-evaluation under another denoiser: the denoising MDP of DDPO / DPOK (Black et al. 2023; Fan et
al. 2023) and the per-step likelihoods of Diffusion-DPO / D3PO (Wallace et al. 2023; Yang et al.
2024).

A sampler written as transitions (:mod:`difflab.sampling.transitions`) runs its own code here: a
trajectory is the sampler's run with every step recorded, so its last state is the sampler's output
bit for bit, and :func:`replay` runs the sampler again with each step handed the recorded state,
returning the step's mean under the new denoiser and its log-probability (:func:`log_probs`). A
deterministic step (std = 0: the final step into sigma = 0, the data-prediction step from
sigma = inf, a step outside SA-Solver's noise interval) has log-probability 0.

Densities are of x = x0 + sigma eps. In a process's own coordinates x_t = a_t x (VP, flow) a step's
log-probability shifts by -d log a_{t'}, the same for every denoiser: ratios and differences (PPO,
DPO) do not change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from difflab.core.counting import CountingDenoiser
from difflab.sampling.noise import noise_source
from difflab.sampling.registry import (
    DenoiserFn,
    SamplerGrid,
    SamplerInfo,
    available,
    info,
    validate,
)
from difflab.sampling.transitions import Step, draw, gaussian_log_prob

__all__ = ["Replay", "Trajectory", "log_probs", "replay", "trajectory", "transition_samplers"]


@dataclass(frozen=True)
class Trajectory:
    """x_0 -> ... -> x_N of a stochastic sampler, x_{i+1} ~ N(means[i], stds[i]^2 I) (Black et al. 2023).

    sigmas [N + 1] (float64, the grid), xs [N + 1, B, ...] (xs[-1] the sampler's output), means
    [N, B, ...], stds [N] (float64, one per step; 0: deterministic), log_probs [N, B] (float64,
    log N(xs[i + 1]; means[i], stds[i]^2 I) summed over the non-batch dims, 0 where stds[i] = 0),
    nfe (denoiser evaluations spent)."""

    sigmas: Tensor
    xs: Tensor
    means: Tensor
    stds: Tensor
    log_probs: Tensor
    nfe: int

    @property
    def stochastic(self) -> Tensor:
        """[N] bool: the steps that draw noise (the others have log-probability 0)."""
        return self.stds != 0


def transition_samplers() -> list[str]:
    """The samplers (aliases included) written as Gaussian transitions."""
    return [name for name in available() if info(name).transitions]


def _entry(name: str) -> SamplerInfo:
    entry = info(name)
    if not entry.transitions:
        raise ValueError(
            f"sampler {name!r} has no Gaussian transitions (its noise enters nonlinearly, or it "
            f"has none); supported: {', '.join(transition_samplers())}"
        )
    return entry


def _log_prob(x: Tensor, mean: Tensor, std: float) -> Tensor:
    if std == 0:
        return torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    return gaussian_log_prob(x, mean, std)


def trajectory(
    name: str,
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor | Sequence[float],
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    cond: dict[str, Any] | None = None,
    **options: Any,
) -> Trajectory:
    """Sample with ``name`` and record each step x_{i+1} = m_i + s_i z: states, means, stds and
    log N(x_{i+1}; m_i, s_i^2 I) (the denoising MDP, Black et al. 2023). Same calls, NFE and noise
    as ``sampling.get(name)(denoiser, x, sigmas, generator=generator, cond=cond, **options)``,
    whose output is ``xs[-1]`` bit for bit. Run it under ``torch.no_grad()`` unless the graph
    through the sampler is wanted."""
    entry = _entry(name)
    s = validate(x, sigmas)
    xs, means, stds, lps = [x], [], [], []

    def record(x_next: Tensor, mean: Tensor, std: float) -> None:
        xs.append(x_next)
        means.append(mean)
        stds.append(abs(std))
        lps.append(_log_prob(x_next, mean, std))

    def steps(grid: SamplerGrid, start: Tensor, kind: str) -> Step:
        if math.isinf(s[0]):  # the deterministic data-prediction step from sigma = inf
            record(start, start, 0.0)
        sample = draw(grid.sigmas, noise_source(start, generator, kind))

        def step(
            i: int, mean: Tensor, std: float, fused: bool = False
        ) -> tuple[Tensor, Tensor | None]:
            out = sample(i, mean, std, fused)
            record(out[0], mean, std)
            return out

        return step

    counted = CountingDenoiser(denoiser)
    out = entry.run(counted, x, s, options, generator=generator, cond=cond, steps=steps)
    if len(xs) == len(s) - 1:  # the final deterministic step (into 0, or from inf at once)
        record(out, out, 0.0)
    if len(xs) != len(s):
        raise RuntimeError(f"{name} recorded {len(xs) - 1} transitions on {len(s) - 1} intervals")
    return Trajectory(
        torch.tensor(s, dtype=torch.float64),
        torch.stack(xs),
        torch.stack(means),
        torch.tensor(stds, dtype=torch.float64),
        torch.stack(lps),
        counted.calls,
    )


@dataclass(frozen=True)
class Replay:
    """A recorded trajectory re-scored under a denoiser (Black et al. 2023): means [N, B, ...]
    m_i(x_0..x_i; D) (the recorded next state where the step is deterministic) and log_probs
    [N, B] log N(x_{i+1}; m_i, s_i^2 I) (float64, 0 where s_i = 0)."""

    means: Tensor
    log_probs: Tensor


def replay(
    name: str,
    denoiser: DenoiserFn,
    trajectory: Trajectory,
    *,
    cond: dict[str, Any] | None = None,
    **options: Any,
) -> Replay:
    """Each recorded step's mean m_i recomputed under ``denoiser`` from the recorded states (and the
    sampler's history of them) and log N(x_{i+1}; m_i, s_i^2 I): the means of the chains' KL (Fan
    et al. 2023), the log-probabilities of PPO ratios and DPO losses (Black et al. 2023; Wallace et
    al. 2023). The sampler's NFE; differentiable in the denoiser and in the states."""
    entry = _entry(name)
    s = trajectory.sigmas.tolist()
    xs = trajectory.xs
    if xs.shape[0] != len(s):
        raise ValueError(f"trajectory has {xs.shape[0]} states for a grid of {len(s)} levels")
    start = 1 if math.isinf(s[0]) else 0  # the step from sigma = inf is deterministic
    means = list(xs[1:].unbind(0))
    scores = [_log_prob(xs[0], xs[0], 0.0)] * (len(s) - 1)

    def step(i: int, mean: Tensor, std: float, fused: bool = False) -> tuple[Tensor, Tensor | None]:
        x_next = xs[start + i + 1]
        means[start + i] = mean
        scores[start + i] = _log_prob(x_next, mean, std)
        return x_next, (x_next - mean if std != 0 and not fused else None)

    if len(s) - start > 1:
        entry.run(denoiser, xs[start], s[start:], options, cond=cond, steps=lambda *_: step)
    return Replay(torch.stack(means), torch.stack(scores))


def log_probs(
    name: str,
    denoiser: DenoiserFn,
    trajectory: Trajectory,
    *,
    cond: dict[str, Any] | None = None,
    **options: Any,
) -> Tensor:
    """[N, B] log p(x_{i+1} | x_0..x_i) of the recorded steps under ``denoiser``: the log-probs of
    :func:`replay`, 0 on deterministic steps (Black et al. 2023; Wallace et al. 2023)."""
    return replay(name, denoiser, trajectory, cond=cond, **options).log_probs
