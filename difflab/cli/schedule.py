"""`difflab schedule optimize`: search the step grid that minimizes a sampler's error on an exact
mixture, and write it as JSON for `difflab sample --schedule grid.json`."""

from __future__ import annotations

import argparse
from typing import Any

from difflab.cli.common import CliError, check_output
from difflab.cli.exact import EXACT_MODELS, EXACT_SIGMA_RANGE, exact_model

__all__ = ["add"]


def add(commands: Any) -> None:
    o = commands.add_parser(
        "schedule",
        help="optimize a step grid for a model, sampler and NFE budget",
        description="`difflab schedule optimize` searches the sigma grid that minimizes the "
        "sampler's endpoint error against the exact flow (exact models) on calibration noise, "
        "reports it on held-out noise next to the fixed grids, and writes it as JSON; "
        "`difflab sample --schedule grid.json` samples with it.",
    )
    o.add_argument("action", choices=["optimize"], help="what to do")
    o.add_argument(
        "--model", default="ring2d", help=f"model name: one of {', '.join(EXACT_MODELS)}"
    )
    o.add_argument("--sampler", default="dpmpp_2m", help="sampler name")
    o.add_argument("--nfe", type=int, default=6, help="NFE budget")
    o.add_argument(
        "--method", default="direct", help="direct (terminal error) or ays (Align Your Steps)"
    )
    o.add_argument("--n", type=int, default=64, help="calibration samples")
    o.add_argument("--seed", type=int, default=0, help="seed of calibration and held-out noise")
    o.add_argument("--out", default="grid.json", help="output JSON")
    o.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    import torch

    from difflab import schedules
    from difflab.utils.files import atomic_write_bytes

    model = exact_model(args.model)
    if args.n < 2:
        raise CliError(f"--n must be >= 2, got {args.n}")
    out = check_output(args.out, (".json",))
    try:
        g = torch.Generator().manual_seed(args.seed)
        sigma_min, sigma_max = EXACT_SIGMA_RANGE
        calibration = torch.randn(args.n, model.dim, generator=g, dtype=torch.float64) * sigma_max
        result = schedules.optimize(
            model, args.sampler, args.nfe, calibration, sigma_min=sigma_min, sigma_max=sigma_max,
            method=args.method, seed=args.seed, reference=lambda x: model.ode(x, sigma_max, 0.0).x,
        )  # fmt: skip
    except (ValueError, ImportError) as e:
        raise CliError(str(e)) from None
    print(f"{args.sampler} at {args.nfe} NFE on {args.model}: endpoint RMSE (held-out noise)")
    for name, (_, held_out) in result.fixed.items():
        print(f"  {name:12} {held_out:.3e}")
    print(f"  {'optimized':12} {result.held_out_error:.3e}  ({args.method})")
    print("  sigmas: " + " ".join(f"{float(v):.4g}" for v in result.sigmas))
    atomic_write_bytes(out, result.to_json().encode())
    print(f"wrote {out}")
