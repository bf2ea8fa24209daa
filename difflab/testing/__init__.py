"""Exact models and checks that judge samplers, schedules, guidance and inversion (DESIGN.md)."""

from difflab.testing.gmm import (
    FlowSolution,
    GaussianMixture,
    gaussian,
    random_mixture,
    ring2d,
    stiff,
)

__all__ = ["FlowSolution", "GaussianMixture", "gaussian", "random_mixture", "ring2d", "stiff"]
