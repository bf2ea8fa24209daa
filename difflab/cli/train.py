"""`difflab train`: train a network from a TOML config and export the model folder at the end."""

from __future__ import annotations

import argparse
from typing import Any

from difflab.cli.common import add_run_arguments, run_training

__all__ = ["add"]


def add(commands: Any) -> None:
    t = commands.add_parser(
        "train",
        help="train a model from a TOML config",
        description="Train a network from a config (configs/*.toml in the repository) with "
        "section.key=value overrides. The run folder (run.out/run.name) gets config.json, "
        "checkpoints/ (crash-safe; a rerun resumes the latest one bit-identically), metrics.jsonl "
        "(and tensorboard/ when TensorBoard is installed; run.tensorboard=false turns it off), "
        "samples/ and, at the end, model/: a model directory `difflab sample --model DIR` loads.",
        epilog="Example: difflab train --config configs/toy_moons.toml run.steps=500 optim.lr=1e-3",
    )
    add_run_arguments(t)
    t.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from difflab.training.loop import train

    run_training(args, train)
