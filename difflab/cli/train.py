"""`difflab train`: train a network from a TOML config and export the model folder at the end."""

from __future__ import annotations

import argparse
from typing import Any

from difflab.cli.common import CliError

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
    t.add_argument("--config", required=True, help="TOML or JSON training config")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.lr=1e-3")
    t.add_argument("--run-dir", default=None, help="run folder (default: run.out/run.name)")
    t.add_argument(
        "--fresh", action="store_true", help="start over instead of resuming the latest checkpoint"
    )
    t.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from difflab.pretrained import save_model
    from difflab.training.loop import train

    try:
        trainer = train(args.config, args.overrides, args.run_dir, resume=not args.fresh)
    except (ValueError, FileNotFoundError) as e:
        raise CliError(str(e)) from None
    if trainer.finished and trainer.rank == 0:
        folder = save_model(
            trainer.run_dir / "model",
            trainer.ema.model,
            objective=trainer.objective,
            data=trainer.data,
            sample=trainer.config["sample"],
            training={
                "config": trainer.config,
                "steps": trainer.step,
                "command": " ".join(["difflab train --config", str(args.config), *args.overrides]),
            },
        )
        print(f"wrote {folder}")
