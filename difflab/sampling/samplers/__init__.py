"""Sampler implementations; importing this package registers them."""

from difflab.sampling.samplers import (  # noqa: F401
    adaptive,
    consistency,
    euler_variants,
    exponential,
    multistep,
    ode,
    res,
    singlestep_sde,
    stochastic,
)
