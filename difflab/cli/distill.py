"""`difflab distill`: distil a saved model into a few-step student (progressive, consistency, reflow)."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from difflab.cli.common import CliError, user_errors

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
    d.add_argument("--config", required=True, help="TOML or JSON distillation config")
    d.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.lr=1e-4")
    d.add_argument("--run-dir", default=None, help="run folder (default: run.out/run.name)")
    d.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    d.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    import copy
    import math
    from pathlib import Path
    from types import SimpleNamespace

    import torch

    from difflab import data as datasets
    from difflab import models
    from difflab.acceleration.distill import DEFAULTS, DistillTrainer, full_config
    from difflab.guidance import classifier_free
    from difflab.pretrained import load, save_model
    from difflab.training import distributed as dist
    from difflab.training.config import load_config
    from difflab.training.objectives import Objective

    with user_errors():
        config = full_config(load_config(args.config, args.overrides, DEFAULTS, ("method", "data")))
        teacher_cfg, run_cfg = config["teacher"], config["run"]
        model = load(teacher_cfg["model"]).to(dist.device())
        guidance = float(teacher_cfg["guidance"])
        if guidance != 1 and not model.has_null_class:
            raise CliError(
                f"teacher.guidance {guidance:g} needs a model with a trained null class; "
                f"{model.name} has none (use 1)"
            )
        teacher = model.denoiser if guidance == 1 else classifier_free(model.denoiser, guidance)
        d = model.defaults
        process = model.objective.process
        sigma_min = teacher_cfg["sigma_min"] or d.get("sigma_min") or process.sigma_min
        sigma_max = teacher_cfg["sigma_max"] or d.get("sigma_max") or process.sigma_max
        if not math.isfinite(sigma_max) and config["method"]["name"] != "reflow":
            raise CliError(
                f"{config['method']['name']} needs a finite sigma_max; the teacher's is inf "
                "(a flow model): set teacher.sigma_max, e.g. teacher.sigma_max=80"
            )
        if config["student"]["init"] == "teacher":
            student = copy.deepcopy(model.network)
        else:
            torch.manual_seed(run_cfg["seed"])
            student = models.build(model.config["network"])
        student.train().requires_grad_(True)
        data = None
        if config["method"]["name"] != "reflow":
            options = {k: v for k, v in config["data"].items() if k not in ("name", "split")}
            data = datasets.load(config["data"]["name"], split=config["data"]["split"], **options)
            if tuple(data.shape) != tuple(model.shape):
                raise CliError(
                    f"data {data.name} has samples of shape {list(data.shape)}, the teacher "
                    f"{model.name} makes {list(model.shape)}"
                )
            if model.num_classes and data.labels is None:
                raise CliError(
                    f"the teacher is class-conditional but data {data.name} has no labels"
                )
        # the student is never trained on the null class: it samples without guidance
        objective = Objective.from_config({**model.objective.config, "label_dropout": 0.0})
        described = SimpleNamespace(
            name=model.config["data"]["name"],
            shape=model.shape,
            num_classes=model.num_classes,
            classes=model.classes,
        )
        command = shlex.join(["difflab", "distill", "--config", str(args.config), *args.overrides])
        run_dir = Path(args.run_dir or Path(run_cfg["out"]) / run_cfg["name"])

        def export(name: str, net: torch.nn.Module, sample: dict[str, Any]) -> None:
            folder = save_model(
                run_dir / name,
                net,
                objective=objective,
                data=described,
                sample=sample,
                training={"config": config, "steps": trainer.step, "command": command},
                extra={
                    "distillation": {
                        "method": config["method"]["name"],
                        "teacher": model.name,
                        "guidance": guidance,
                        "steps": sample["steps"],
                    }
                },
            )
            print(f"wrote {folder} ({sample['steps']}-step {sample['sampler']})", flush=True)

        teacher_cfg["schedule"] = teacher_cfg["schedule"] or d["schedule"]
        trainer = DistillTrainer(
            config,
            teacher,
            student,
            objective,
            data,
            sigma_min,
            sigma_max,
            run_dir,
            export,
            shape=model.shape,
        )
        if not args.fresh:
            trainer.resume()
        trainer.fit()
