"""Streaming denoising (Streaming Diffusion Policy, Høeg et al. 2024): an action buffer whose noise
level increases along the horizon, advanced by one denoiser call per control step.

The chunk's H tokens are To - 1 past actions (executed, kept at sigma_min) and K = H - To + 1 future
ones; future token j (0 = the current step) sits at level L((j + 1) / K) of the ladder

    L(u) = (sigma_min^(1/rho) + u (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho      (Karras et al. 2022)

— one noise level per token, DESIGN.md's per-element sigma. A control step makes one Euler step of
every token at once, from L((j + 1) / K) to L(j / K) (token 0 to 0: it is then clean and executed),
shifts the buffer by one and appends fresh noise at sigma_max = L(1). The buffer starts from a chunk
sampled the usual way, its future tokens re-noised onto the ladder. Training at these levels is the
``policy.streaming`` fraction of :class:`~difflab.policy.train.PolicyTask`, which draws the ladder
with a random offset u ~ U[0, 1): L((j + u) / K), so the execution's u = 1 and u = 0 are both seen.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import Tensor

from difflab import sampling
from difflab.envs.base import generator
from difflab.policy.model import PolicyModel

__all__ = ["LADDER", "StreamingPolicy", "ladder", "ladder_levels", "streaming_step"]

LADDER = {"sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0}


def ladder(u: Tensor) -> Tensor:
    """L(u) for u in [0, 1] (module docstring), float64."""
    lo, hi, rho = (LADDER[k] for k in ("sigma_min", "sigma_max", "rho"))
    u = u.to(torch.float64)
    return (lo ** (1 / rho) + u * (hi ** (1 / rho) - lo ** (1 / rho))) ** rho


def token_levels(horizons: dict[str, int], offset: Tensor) -> Tensor:
    """[N, H] levels: sigma_min on the To - 1 past tokens, L((j + u_n) / K) on future token j."""
    past, k = horizons["obs"] - 1, horizons["pred"] - horizons["obs"] + 1
    j = torch.arange(k, dtype=torch.float64)
    future = ladder((j[None] + offset.to(torch.float64)[:, None]) / k)
    floor = torch.full((len(offset), past), LADDER["sigma_min"], dtype=torch.float64)
    return torch.cat([floor, future], 1)


def ladder_levels(n: int, horizons: dict[str, int], generator: torch.Generator) -> Tensor:
    """Training levels [n, H] of streaming denoising: :func:`token_levels` at u ~ U[0, 1)."""
    return token_levels(horizons, torch.rand(n, generator=generator, dtype=torch.float64))


def streaming_step(
    denoiser: object, x: Tensor, context: Tensor, horizons: dict[str, int]
) -> Tensor:
    """One Euler step of every token, x' = x + (s' - s) (x - D(x, s)) / s with s = the ladder at
    u = 1 and s' at u = 0 (token To - 1 to s' = 0, where x' = D): one denoiser call for all N."""
    n = x.shape[0]
    s = token_levels(horizons, torch.ones(n)).to(x)
    s_next = token_levels(horizons, torch.zeros(n)).to(x)
    s_next[:, horizons["obs"] - 1] = 0.0
    d = denoiser(x, s[..., None], context=context)
    return x + ((s_next - s) / s)[..., None] * (x - d)


class StreamingPolicy:
    """pi(o_t) for N environments by streaming denoising (module docstring; Høeg et al. 2024):
    one network call per control step; ``options`` (sampler, steps, schedule) set how the first
    chunk of an episode is sampled."""

    def __init__(self, model: PolicyModel, **options: object) -> None:
        if model.method == "mse":
            raise ValueError("streaming denoising needs a diffusion policy, not an mse one")
        self.model, self.options = model, options
        self.name = "difflab.policy (streaming)"
        self.history = torch.zeros(0)
        self.buffer = torch.zeros(0)
        self.generators: list[torch.Generator] = []
        self.chunks_sampled, self.calls, self.seconds = 0, 0, 0.0

    def reset(self, seeds: Sequence[int]) -> None:
        self.generators = [generator(int(s), 2) for s in seeds]
        self.history, self.buffer = torch.zeros(0), torch.zeros(0)

    def _fresh(self) -> Tensor:
        """Unit noise [N, 1, act_dim], row i from its own generator."""
        n, a = len(self.generators), self.model.act_dim
        return sampling.randn((n, 1, a), self.generators)

    def __call__(self, observations: Tensor) -> Tensor:
        start = time.perf_counter()
        model, h = self.model, self.model.horizons
        obs = observations.to(torch.float32)[:, None]
        if self.history.numel() == 0:
            self.history = obs.expand(-1, h["obs"], -1).clone()
        else:
            self.history = torch.cat([self.history[:, 1:], obs], 1)
        context = model.context(self.history)
        if self.buffer.numel() == 0:  # the first chunk, its future tokens put onto the ladder
            chunk = model.chunks(self.history, generator=self.generators, **self.options)
            a0 = model.act_normalizer(chunk.to(context))
            z = model.noise(len(a0), self.generators)
            levels = token_levels(h, torch.ones(len(a0))).to(a0)
            self.buffer = a0 + levels[..., None] * z
            self.chunks_sampled += 1
        with torch.no_grad():
            x = streaming_step(model.denoiser, self.buffer, context, h)
        action = model.act_normalizer.unnormalize(x[:, h["obs"] - 1])
        self.buffer = torch.cat([x[:, 1:], LADDER["sigma_max"] * self._fresh().to(x)], 1)
        self.calls += 1
        self.seconds += time.perf_counter() - start
        return action.cpu().to(torch.float64)
