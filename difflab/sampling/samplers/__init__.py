"""Sampler implementations; importing this package registers them."""

from difflab.sampling.samplers import ode  # noqa: F401
