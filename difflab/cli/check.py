"""`difflab check-sampler`: judge any sampler function against the exact probability-flow ODE."""

from __future__ import annotations

import argparse
from typing import Any

from difflab.cli.common import CliError, lookup

__all__ = ["add"]


def add(commands: Any) -> None:
    c = commands.add_parser(
        "check-sampler",
        help="judge any sampler against the exact probability-flow ODE",
        description="Import module:function (a sampler with difflab's calling convention "
        "fn(denoiser, x, sigmas, **options)) and report its measured convergence order, NFE per step "
        "count, batch invariance and endpoint error against the exact flow of a Gaussian mixture.",
    )
    c.add_argument("target", help="module:function, or the name of a registered difflab sampler")
    c.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32, 64], help="step counts")
    c.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    import importlib

    from difflab import sampling
    from difflab.testing import checks

    if any(s < 1 for s in args.steps):
        raise CliError(f"--steps must all be >= 1, got {' '.join(map(str, args.steps))}")
    target = args.target
    if ":" in target:
        module, _, attr = target.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise CliError(f"cannot import {target}: {e}") from None
    else:
        fn = lookup(sampling.get, target)
        if sampling.info(target).stochastic:
            raise CliError(
                f"{target} is stochastic; check-sampler measures convergence to the exact ODE flow"
            )
    print(checks.check_sampler(fn, target, steps=tuple(args.steps)))
