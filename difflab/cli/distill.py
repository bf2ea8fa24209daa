"""`difflab distill`: distil a saved model into a few-step student (progressive, consistency, reflow)."""

from __future__ import annotations

import argparse
from typing import Any

from difflab.cli.common import add_run_arguments, run_training

__all__ = ["add"]


def add(commands: Any) -> None:
    d = commands.add_parser(
        "distill",
        help="distil a model into a 1-4 step student",
        description="Distil a shipped or trained model (teacher.model) into a few-step student "
        "with progressive distillation, consistency distillation / training or reflow, from a "
        "config (configs/distill_*.toml) with section.key=value overrides. The run folder "
        "(run.out/run.name) gets config.json, checkpoints/ (a rerun resumes the latest one), "
        "metrics.jsonl and the students as model folders `difflab sample --model DIR` loads: "
        "model_4step, model_2step, model_1step (progressive) or model (the others). "
        "See docs/acceleration.md.",
        epilog="Example: difflab distill --config configs/distill_reflow_moons.toml run.steps=500",
    )
    add_run_arguments(d, "distillation")
    d.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from functools import partial

    from difflab.acceleration.distill import distill
    from difflab.pretrained import load

    run_training(args, partial(distill, load))  # the teacher: the model teacher.model names
