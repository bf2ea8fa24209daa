"""Sampler implementations; importing this package registers them."""

from difflab.sampling.samplers import adaptive, multistep, ode, stochastic  # noqa: F401
