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
from difflab.testing.metrics import sliced_w2, wasserstein2_1d
from difflab.testing.posterior import LinearGaussianProblem, projection_problem
from difflab.testing.tilted import (
    LinearReward,
    QuadraticReward,
    mean_reward,
    preference_optimum,
    tilted,
)

__all__ = [
    "AR1",
    "FlowSolution",
    "GaussianMixture",
    "LinearGaussianProblem",
    "LinearReward",
    "QuadraticReward",
    "gaussian",
    "mean_reward",
    "preference_optimum",
    "projection_problem",
    "random_mixture",
    "ring2d",
    "sliced_w2",
    "stiff",
    "tilted",
    "wasserstein2_1d",
]
