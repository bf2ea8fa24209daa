"""Sampler implementations; importing this package registers them."""

from difflab.sampling.samplers import (  # noqa: F401
    adaptive,
    consistency,
    exponential,
    multistep,
    ode,
    stochastic,
)
