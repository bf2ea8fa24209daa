"""Layer 2: samplers as plain functions ``sampler(denoiser, x, sigmas, *, generator, callback, **options)``,
registered by name with their NFE, order and stochasticity (DESIGN.md)."""

from difflab.sampling.auto import AutoChoice, auto, choose
from difflab.sampling.noise import generators, randn
from difflab.sampling.registry import SamplerInfo, available, get, info, noise_source, register
from difflab.sampling.trajectories import (
    Replay,
    Trajectory,
    log_probs,
    replay,
    trajectory,
    transition_samplers,
)

__all__ = [
    "AutoChoice",
    "Replay",
    "SamplerInfo",
    "Trajectory",
    "auto",
    "available",
    "choose",
    "generators",
    "get",
    "info",
    "log_probs",
    "noise_source",
    "randn",
    "register",
    "replay",
    "trajectory",
    "transition_samplers",
]
