"""`difflab policy ...`: diffusion policies for control: collect demonstrations (`collect`), train a
policy (`train`) and measure its success (`eval`).

Each subcommand is one ``add_NAME(sub)`` function in :data:`SUBCOMMANDS` that adds its parser and
sets ``run`` to its handler.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from difflab.cli.common import (
    CliError,
    add_run_arguments,
    check_output,
    positive,
    run_training,
    user_errors,
)

__all__ = ["ENV_HELP", "SUBCOMMANDS", "add", "add_collect", "add_eval", "add_train", "env_errors"]

ENV_HELP = "metaworld/TASK (any of MetaWorld's 50 tasks, e.g. metaworld/reach) or toy/obstacle"


@contextmanager
def env_errors() -> Iterator[None]:
    """:func:`~difflab.cli.common.user_errors`, and a missing optional extra (the ImportError of
    ``metaworld/TASK`` without the 'policy' extra) as a CliError too."""
    with user_errors():
        try:
            yield
        except ImportError as e:
            raise CliError(str(e)) from None


def add_collect(sub: Any) -> None:
    c = sub.add_parser(
        "collect",
        help="record demonstrations of a task's scripted expert",
        description="Run the environment's scripted expert (MetaWorld's metaworld.policies expert "
        "of the task; toy/obstacle's demonstrator) for N episodes, episode i seeded from (--seed, "
        "i), and save them as .npz (observations, actions, rewards, episode lengths, success, seeds; "
        "never pickled). Only successful episodes are kept unless --keep-failures.",
        epilog="Example: difflab policy collect --env metaworld/reach --episodes 50 --seed 0 "
        "--out demos.npz",
    )
    c.add_argument("--env", required=True, help=ENV_HELP)
    c.add_argument("--episodes", type=int, required=True, help="episodes to run")
    c.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    c.add_argument("--out", required=True, help="the .npz file to write")
    c.add_argument(
        "--keep-failures", action="store_true", help="keep the expert's failed episodes too"
    )
    c.add_argument(
        "--max-steps", type=int, default=None, help="steps per episode (default: the task's limit)"
    )
    c.add_argument("--num-envs", type=int, default=16, help="episodes run together (default 16)")
    c.set_defaults(run=run_collect)


def run_collect(args: argparse.Namespace) -> None:
    from difflab.envs import collect

    positive(args.episodes, "--episodes")
    positive(args.seed, "--seed", minimum=0)
    positive(args.max_steps, "--max-steps")
    positive(args.num_envs, "--num-envs")
    out = check_output(args.out, (".npz",))
    with env_errors():
        result = collect(
            args.env,
            args.episodes,
            args.seed,
            keep_failures=args.keep_failures,
            max_steps=args.max_steps,
            num_envs=args.num_envs,
            progress=True,
        )
        result.demos.save(out)
    demos = result.demos
    kept = "all kept" if args.keep_failures else "failures dropped; --keep-failures keeps them"
    print(
        f"{demos.env}: expert success {result.successes}/{result.episodes} "
        f"({result.success_rate:.3f}); kept {demos.episodes} episodes, {demos.steps} steps "
        f"({kept}); {result.steps} steps run in {result.seconds:.1f} s"
    )
    print(f"wrote {out}")


def add_train(sub: Any) -> None:
    t = sub.add_parser(
        "train",
        help="train a policy on demonstrations (or on the expert's, collected first)",
        description="Train a diffusion policy over action chunks from a config "
        "(configs/policy_*.toml) with section.key=value overrides: data.env names the task, "
        "data.demos a .npz of `difflab policy collect` (empty: collect data.episodes expert "
        "episodes first), policy.method diffusion (default), ddpm (Diffusion Policy's recipe), mse "
        "(behaviour cloning) or reflow (a few-step student of policy.teacher). The run folder gets "
        "checkpoints/ (a rerun resumes), metrics.jsonl and, at the end, model/: a policy folder "
        "`difflab policy eval --model DIR` loads.",
        epilog="Example: difflab policy train --config configs/policy_metaworld.toml "
        "data.env=metaworld/drawer-close --run-dir runs/drawer-close",
    )
    add_run_arguments(t, "policy training")
    t.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> None:
    from difflab.policy import PolicyTask
    from difflab.training.loop import run

    def train(config: str, overrides: list[str], run_dir: str | None, resume: bool) -> Any:
        return run(PolicyTask(), config, overrides, run_dir, resume)

    with env_errors():
        run_training(args, train)


def add_eval(sub: Any) -> None:
    e = sub.add_parser(
        "eval",
        help="success rate, return and latency of a policy",
        description="Run a policy for N episodes (episode i seeded from (--seed, i)) in batched "
        "environments, with receding-horizon execution (or --streaming denoising), and print its "
        "success rate, mean episode return and milliseconds per action; --json writes them "
        "(success_rate, episodes, nfe_per_action, ms_per_action, ...).",
        epilog="Example: difflab policy eval --model runs/policy/model --env metaworld/reach "
        "--episodes 50 --seed 1000 --sampler heun --steps 2 --json reach.json",
    )
    e.add_argument("--model", required=True, help="a policy folder, or a run folder with model/")
    e.add_argument("--env", required=True, help=ENV_HELP)
    e.add_argument("--episodes", type=int, required=True, help="episodes to run")
    e.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    e.add_argument("--sampler", default=None, help="any difflab sampler (default: the model's)")
    e.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    e.add_argument("--schedule", default=None, help="step grid (default: the model's)")
    e.add_argument(
        "--sigma-min",
        type=float,
        default=None,
        help="the grid's last level before 0 (default: the model's)",
    )
    e.add_argument("--guidance", type=float, default=None, help="classifier-free guidance weight")
    e.add_argument("--streaming", action="store_true", help="streaming denoising, 1 NFE / action")
    e.add_argument("--num-envs", type=int, default=50, help="episodes run together (default 50)")
    e.add_argument("--max-steps", type=int, default=None, help="steps per episode")
    e.add_argument("--json", default=None, help="write the results to this .json file")
    e.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> None:
    import json

    from difflab.pretrained.catalog import load_policy
    from difflab.utils.files import atomic_write_bytes

    positive(args.episodes, "--episodes")
    positive(args.seed, "--seed", minimum=0)
    positive(args.steps, "--steps")
    positive(args.num_envs, "--num-envs")
    positive(args.max_steps, "--max-steps")
    out = check_output(args.json, (".json",), "--json") if args.json else None
    options = {
        k: getattr(args, k)
        for k in ("sampler", "steps", "schedule", "sigma_min", "guidance")
        if getattr(args, k) is not None
    }
    with env_errors():
        from difflab.policy import evaluate

        policy = load_policy(args.model)
        result = evaluate(
            policy,
            args.env,
            args.episodes,
            args.seed,
            num_envs=args.num_envs,
            streaming=args.streaming,
            max_steps=args.max_steps,
            **options,
        )
    print(
        f"{result['env']}: success {result['success_rate']:.3f} ± {result['success_se']:.3f} "
        f"over {result['episodes']} episodes, mean return {result['mean_return']:.2f}, "
        f"{result['ms_per_action']:.2f} ms / action ({result['nfe_per_action']:.3g} NFE / action)"
    )
    if "modes" in result:
        print("modes: " + ", ".join(f"{k} {v:.2f}" for k, v in result["modes"].items()))
    if out is not None:
        atomic_write_bytes(out, (json.dumps(result, indent=2) + "\n").encode())
        print(f"wrote {out}")


SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (add_collect, add_train, add_eval)


def add(commands: Any) -> None:
    p = commands.add_parser(
        "policy",
        help="diffusion policies for control: collect demonstrations, train, evaluate",
        description="Diffusion policies for control tasks (MetaWorld with the optional extra "
        "'policy', and toy/obstacle): collect demonstrations from a scripted expert, train a "
        "policy on them, measure its success rate and latency.",
        epilog="Example: difflab policy collect --env metaworld/reach --episodes 50 --seed 0 "
        "--out demos.npz",
    )
    sub = p.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(sub)
