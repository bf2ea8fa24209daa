"""Layer 3: training objectives (prediction types, loss weightings, noise-level distributions, label
dropout, immiscible noise assignment) in the sigma_ve convention of DESIGN.md, and the one training
loop (:mod:`difflab.training.loop`: :class:`Trainer` with a pluggable :class:`Task`; the denoising
task, :mod:`difflab.training.denoising`, is what :func:`train` runs).

    trainer = difflab.training.train({"data": {"name": "moons"}, "model": {"type": "mlp", "dim": 2}})
    model = difflab.load(trainer.run_dir / "model")
"""

from typing import Any

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
    "Task",
    "Trainer",
    "Weighting",
    "denoising_loss",
    "drop_labels",
    "immiscible_assignment",
    "network_output",
    "output_slopes",
    "train",
]

_LOOP = ("Task", "Trainer", "train")


def __getattr__(name: str) -> Any:
    """The loop's names (``Trainer``, ``Task``, ``train``), imported on first use so that importing
    the objectives stays cheap."""
    if name in _LOOP:
        from difflab.training import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'difflab.training' has no attribute {name!r}")
