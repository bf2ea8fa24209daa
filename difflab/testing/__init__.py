"""Exact models and checks that judge samplers, schedules, guidance and inversion (DESIGN.md)."""

from difflab.testing.ar1 import AR1
from difflab.testing.gmm import (
    FlowSolution,
    GaussianMixture,
    gaussian,
    random_mixture,
    ring2d,
    stiff,
)
from difflab.testing.posterior import LinearGaussianProblem, projection_problem

__all__ = [
    "AR1",
    "FlowSolution",
    "GaussianMixture",
    "LinearGaussianProblem",
    "gaussian",
    "projection_problem",
    "random_mixture",
    "ring2d",
    "stiff",
]
