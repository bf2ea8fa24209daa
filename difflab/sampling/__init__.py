"""Layer 2: samplers as plain functions ``sampler(denoiser, x, sigmas, *, generator, callback, **options)``,
registered by name with their NFE, order and stochasticity (DESIGN.md)."""

from difflab.sampling.auto import AutoChoice, auto, choose
from difflab.sampling.noise import generators, randn
from difflab.sampling.registry import SamplerInfo, available, get, info, noise_source, register

__all__ = [
    "AutoChoice",
    "SamplerInfo",
    "auto",
    "available",
    "choose",
    "generators",
    "get",
    "info",
    "noise_source",
    "randn",
    "register",
]
