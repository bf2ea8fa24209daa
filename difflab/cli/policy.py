"""`difflab policy ...`: diffusion policies for control: collect demonstrations (`collect`).

Each subcommand is one ``add_NAME(sub)`` function in :data:`SUBCOMMANDS` that adds its parser and
sets ``run`` to its handler.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from difflab.cli.common import CliError, check_output, positive, user_errors

__all__ = ["ENV_HELP", "SUBCOMMANDS", "add", "add_collect", "env_errors"]

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


SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (add_collect,)


def add(commands: Any) -> None:
    p = commands.add_parser(
        "policy",
        help="diffusion policies for control: collect demonstrations",
        description="Diffusion policies for control tasks (MetaWorld with the optional extra "
        "'policy', and toy/obstacle): collect demonstrations from a scripted expert.",
        epilog="Example: difflab policy collect --env metaworld/reach --episodes 50 --seed 0 "
        "--out demos.npz",
    )
    sub = p.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(sub)
