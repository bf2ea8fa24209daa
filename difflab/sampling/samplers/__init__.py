"""Sampler implementations; importing this package registers them."""

from difflab.sampling.samplers import (  # noqa: F401
    adaptive,
    exponential,
    multistep,
    ode,
    stochastic,
)
