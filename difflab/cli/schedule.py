"""`difflab schedule optimize`: search the step grid that minimizes a sampler's error for a model and
NFE budget. A saved model keeps its grids in its folder (`--schedule optimized:SAMPLER:NFE` uses
them); an exact mixture's grid is written as JSON (`--schedule grid.json`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from difflab.cli.common import CliError, check_output, positive, user_errors
from difflab.cli.exact import EXACT_MODELS, EXACT_SIGMA_RANGE, exact_model

__all__ = ["add"]

SAVED_MAX_EVALS = (
    100  # a saved model's objective runs the network: about 8 CPU-minutes at MNIST, 8 NFE
)


def add(commands: Any) -> None:
    o = commands.add_parser(
        "schedule",
        help="optimize a step grid for a model, sampler and NFE budget",
        description="`difflab schedule optimize` searches the sigma grid that minimizes the "
        "sampler's endpoint error against a reference solve from calibration noise (the exact "
        "flow for the exact mixtures; a high-NFE solve with the model's default guidance and "
        "labels cycling through its classes for saved models) and reports it on held-out noise "
        "next to the fixed grids. A saved model's grid goes into its folder, "
        "<model>/schedules/SAMPLER_NFE.json, and `difflab sample --model M --schedule "
        "optimized:SAMPLER:NFE` uses it; an exact mixture's grid goes to --out (JSON), used as "
        "`--schedule grid.json`.",
        epilog="Example: difflab schedule optimize --model mnist --sampler dpmpp_2m --nfe 6 8 10",
    )
    o.add_argument("action", choices=["optimize"], help="what to do")
    o.add_argument(
        "--model",
        default="ring2d",
        help=f"a model name (`difflab models`), a model folder, or an exact mixture: "
        f"{', '.join(EXACT_MODELS)} (default: ring2d)",
    )
    o.add_argument("--sampler", default="dpmpp_2m", help="sampler name")
    o.add_argument("--nfe", type=int, nargs="+", default=[6], help="NFE budget(s)")
    o.add_argument(
        "--method", default="direct", help="direct (terminal error) or ays (Align Your Steps)"
    )
    o.add_argument(
        "--n", type=int, default=None, help="calibration samples (default: 64 exact, 32 saved)"
    )
    o.add_argument("--seed", type=int, default=0, help="seed of calibration and held-out noise")
    o.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="guidance scale of a class-conditional model (default: the model's own)",
    )
    o.add_argument(
        "--reference",
        default="dpmpp_3m",
        help="sampler of a saved model's reference solve (default dpmpp_3m)",
    )
    o.add_argument(
        "--reference-steps",
        type=int,
        default=100,
        help="steps of a saved model's reference solve (Karras grid; default 100)",
    )
    o.add_argument(
        "--max-evals",
        type=int,
        default=None,
        help="objective evaluations of the direct search (default: 100 for a saved model, each "
        "one a sampler run on the calibration batch; max(200, 60 (steps - 2)) for an exact one)",
    )
    o.add_argument(
        "--keep-sigma-min",
        action="store_true",
        help="end the grid at sigma_min (direct searches where its last level goes by default)",
    )
    o.add_argument(
        "--out",
        default=None,
        help="output JSON (default: grid.json for an exact mixture, the model folder's "
        "schedules/ for a saved model)",
    )
    o.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from difflab.core.tensors import check_name
    from difflab.schedules.optimize import METHODS

    positive(args.n, "--n", minimum=2)
    positive(args.reference_steps, "--reference-steps")
    positive(args.max_evals, "--max-evals")
    with user_errors():
        check_name("--method", args.method, METHODS)
    if args.out is not None and len(args.nfe) > 1:
        raise CliError(f"--out names one file, but --nfe gives {len(args.nfe)} budgets")
    options: dict[str, Any] = {} if args.max_evals is None else {"max_evals": args.max_evals}
    if args.keep_sigma_min and args.method == "direct":
        options["free_last"] = False
    if args.model in EXACT_MODELS:
        _optimize_exact(args, options)
    else:
        _optimize_saved(args, options)


def _report(title: str, result: Any) -> None:
    print(f"{title}: endpoint RMSE on held-out noise")
    for name, (_, held_out) in result.fixed.items():
        print(f"  {name:12} {held_out:.3e}")
    print(
        f"  {'optimized':12} {result.held_out_error:.3e}  ({result.method}; "
        f"{result.ratio:.2f} x the best fixed grid, {result.best_fixed})"
    )
    print("  sigmas: " + " ".join(f"{float(v):.4g}" for v in result.sigmas))


def _optimize_exact(args: argparse.Namespace, options: dict[str, Any]) -> None:
    import torch

    from difflab import schedules
    from difflab.utils.files import atomic_write_bytes

    if args.guidance is not None:
        raise CliError(f"--guidance needs a class-conditional saved model; {args.model} is not")
    if len(args.nfe) > 1:
        raise CliError("an exact mixture's grid goes to one --out file: give one --nfe")
    model = exact_model(args.model)
    out = check_output(args.out or "grid.json", (".json",))
    n, nfe = args.n or 64, args.nfe[0]
    sigma_min, sigma_max = EXACT_SIGMA_RANGE
    with user_errors():
        g = torch.Generator().manual_seed(args.seed)
        calibration = torch.randn(n, model.dim, generator=g, dtype=torch.float64) * sigma_max
        result = schedules.optimize(
            model, args.sampler, nfe, calibration, sigma_min=sigma_min, sigma_max=sigma_max,
            method=args.method, seed=args.seed, reference=lambda x: model.ode(x, sigma_max, 0.0).x,
            **options,
        )  # fmt: skip
    _report(f"{args.sampler} at {nfe} NFE on {args.model}", result)
    atomic_write_bytes(out, result.to_json().encode())
    print(f"wrote {out}")


def _optimize_saved(args: argparse.Namespace, options: dict[str, Any]) -> None:
    from difflab.cli.sample import load_model
    from difflab.pretrained import grids as saved
    from difflab.sampling import info
    from difflab.utils.files import atomic_write_bytes

    with user_errors():
        info(args.sampler)
        info(args.reference)
    out = None if args.out is None else check_output(args.out, (".json",))
    model = load_model(args.model, "cpu")
    if out is None:
        _check_writable_folder(model.folder)
    if args.method == "direct":
        options.setdefault("max_evals", SAVED_MAX_EVALS)
    with user_errors():
        calibration = saved.calibrate(
            model, args.n or 32, seed=args.seed, guidance=args.guidance,
            reference=args.reference, reference_steps=args.reference_steps,
        )  # fmt: skip
        for nfe in args.nfe:
            result = saved.optimize_model(
                model, args.sampler, nfe, calibration, method=args.method, seed=args.seed,
                **options,
            )  # fmt: skip
            _report(f"{args.sampler} at {nfe} NFE on {model.name}", result)
            if out is not None:
                atomic_write_bytes(out, result.to_json().encode())
                print(f"wrote {out} (use it: --schedule {out})")
            else:
                path = saved.save_grid(model.folder, result)
                name = saved.grid_name(args.sampler, nfe)
                print(f"wrote {path} (use it: --model {args.model} --schedule {name})")


def _check_writable_folder(folder: Path) -> None:
    """A one-line error before any work when the model folder cannot take a schedules/ folder."""
    import os

    target = folder / "schedules"
    where = target if target.is_dir() else folder
    if not os.access(where, os.W_OK):
        raise CliError(
            f"cannot write into {where} (not writable): pass --out FILE.json to write the grid "
            "elsewhere, then sample with --schedule FILE.json"
        )
