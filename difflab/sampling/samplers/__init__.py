"""Sampler implementations; importing this package registers them."""

from difflab.sampling.samplers import adaptive, ode  # noqa: F401
