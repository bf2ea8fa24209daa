"""Layer 3: training objectives (prediction types, loss weightings, noise-level distributions, label
dropout, immiscible noise assignment) in the sigma_ve convention of DESIGN.md."""

from difflab.training.noise_levels import NOISE_LEVELS, NoiseLevels
from difflab.training.objectives import (
    PREDICTIONS,
    Draw,
    Objective,
    denoising_loss,
    drop_labels,
    immiscible_assignment,
    network_output,
    output_slopes,
)
from difflab.training.weighting import WEIGHTINGS, Weighting

__all__ = [
    "NOISE_LEVELS",
    "PREDICTIONS",
    "WEIGHTINGS",
    "Draw",
    "NoiseLevels",
    "Objective",
    "Weighting",
    "denoising_loss",
    "drop_labels",
    "immiscible_assignment",
    "network_output",
    "output_slopes",
]
