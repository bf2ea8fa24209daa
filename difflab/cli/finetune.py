"""`difflab finetune`: fine-tune a saved model toward a reward or preferences (DDPO, DPOK, DRaFT,
Diffusion-DPO, D3PO), fully or with LoRA adapters."""

from __future__ import annotations

import argparse
import json
from typing import Any

from difflab.cli.common import CliError, positive, user_errors

__all__ = ["add"]


def add(commands: Any) -> None:
    f = commands.add_parser(
        "finetune",
        help="fine-tune a model toward a reward or preferences (DDPO, DRaFT, DPO ...)",
        description="Fine-tune a shipped or saved diffusion model (base.model) toward a reward "
        "with a method (method.name): ddpo (PPO on the sampler's steps, Black et al. 2023), dpok "
        "(policy gradient with a KL to the base, Fan et al. 2023), draft (the reward "
        "backpropagated through the last method.k sampler steps; method.random = AlignProp), dpo "
        "(Diffusion-DPO on pairs drawn from the base and labelled by the reward, or method.data "
        "= an .npz of x_w, x_l) and d3po (DPO on pairs of the model's own trajectories). Rewards "
        "(reward.name): classifier:K (log p(K | x) under the MNIST classifier), ink (mean pixel "
        "intensity), linear:w and quadratic on vectors. method.beta is the KL coefficient: the "
        "optimum is p exp(r / beta) / Z. The sampler (sample.sampler) must be stochastic: "
        "ddim_eta, ddpm, euler_ancestral, dpmpp_2m_sde, ...; sample.labels none samples a "
        "class-conditional model without a label. lora.rank > 0 trains LoRA adapters only and "
        "writes an adapter folder (lora.merge = true: also the merged model). Give a config "
        "(configs/finetune_*.toml) with section.key=value overrides, or the options below. "
        "The run folder gets config.json, checkpoints/ (a rerun resumes), metrics.jsonl "
        "(reward per step) and model/, which `difflab sample --model DIR` loads. The base model "
        "is never written.",
        epilog="Examples: difflab finetune --config configs/finetune_mixture_ddpo.toml "
        "run.steps=300 | difflab finetune --model mnist --method draft --reward classifier:3 "
        "--lora 4 --steps 200 --out runs/mnist3",
    )
    f.add_argument("--config", default=None, help="TOML or JSON fine-tuning config")
    f.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. method.beta=0.5")
    f.add_argument("--model", default=None, help="base model: a name (difflab models) or folder")
    f.add_argument("--method", default=None, help="ddpo, dpok, draft, dpo or d3po")
    f.add_argument("--reward", default=None, help="classifier:K, ink, linear:w, quadratic:...")
    f.add_argument("--lora", type=int, default=None, metavar="RANK", help="LoRA rank (0: full)")
    f.add_argument("--steps", type=int, default=None, help="optimizer steps (run.steps)")
    f.add_argument("--out", "--run-dir", dest="run_dir", default=None, help="run folder")
    f.add_argument(
        "--fresh", action="store_true", help="start over instead of resuming the latest checkpoint"
    )
    f.set_defaults(run=run)


# option -> the config key it sets
KEYS = {
    "model": "base.model",
    "method": "method.name",
    "reward": "reward.name",
    "lora": "lora.rank",
    "steps": "run.steps",
}


def run(args: argparse.Namespace) -> None:
    from difflab.finetune import finetune
    from difflab.pretrained import load

    if args.config is None and (args.method is None or args.reward is None):
        raise CliError("give --config, or --method and --reward (and --model, default mnist)")
    positive(args.lora, "--lora", minimum=0)
    positive(args.steps, "--steps")
    given = {option: getattr(args, option) for option in KEYS}
    options = [f"{KEYS[k]}={json.dumps(v)}" for k, v in given.items() if v is not None]
    with user_errors():
        trainer = finetune(
            load,
            args.config or {},
            [*options, *args.overrides],
            args.run_dir,
            resume=not args.fresh,
        )
    for folder in trainer.exported:
        print(f"wrote {folder}")
