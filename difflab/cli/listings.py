"""`difflab samplers`, `difflab schedules` and `difflab models`: what there is to choose from."""

from __future__ import annotations

import argparse
import os
from typing import Any

from difflab.cli.common import CliError

__all__ = ["add"]


def add(commands: Any) -> None:
    sub = commands.add_parser(
        "samplers", help="list samplers with their order, NFE and stochasticity"
    )
    sub.set_defaults(run=samplers)
    sub = commands.add_parser("schedules", help="list step grids")
    sub.set_defaults(run=schedules)
    sub = commands.add_parser(
        "models",
        help="list shipped models and local model folders",
        description="List the models difflab ships (loaded by name), local model folders (by "
        "default ./runs/*/model, as `difflab train` writes them, and ./models/*) and the model "
        "folders under $DIFFLAB_MODELS (a list of folders separated like PATH; loaded by name).",
    )
    sub.add_argument(
        "--dir",
        action="append",
        default=None,
        metavar="DIR",
        help="a model folder, or a folder of model folders (repeatable); replaces the default "
        "./runs/*/model and ./models/*",
    )
    sub.set_defaults(run=models)


def samplers(args: argparse.Namespace) -> None:
    from difflab import sampling

    print(f"{'name':22} {'order':>5} {'NFE(10)':>8} {'stoch':>6}  summary")
    for name in sampling.available():
        i = sampling.info(name)
        alias = "" if i.name == name else f" (alias of {i.name})"
        nfe = "adaptive" if i.adaptive else str(i.nfe(10))
        stoch = "yes" if i.stochastic else "no"
        print(f"{name:22} {i.order:5d} {nfe:>8} {stoch:>6}  {i.summary}{alias}")


def schedules(args: argparse.Namespace) -> None:
    from difflab import schedules as grids

    for name in grids.available():
        doc = (grids.get(name).__doc__ or "").strip().splitlines()
        print(f"{name:18} {doc[0] if doc else ''}")


def _count(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return str(n)


def _where(where: str) -> str:
    """ "shipped", or the folder relative to the current one when it is inside it."""
    if where == "shipped":
        return where
    relative = os.path.relpath(where)
    return os.path.abspath(where) if relative.startswith("..") else relative


def models(args: argparse.Namespace) -> None:
    from difflab import pretrained

    missing = [d for d in args.dir or [] if not os.path.isdir(d)]
    if missing:
        raise CliError(f"--dir {missing[0]} is not a folder")
    shipped = [(pretrained.resolve(name), "shipped") for name in pretrained.available()]
    local = [(folder, str(folder)) for folder in pretrained.find_local(args.dir)]
    if not shipped and not local:
        where = ", ".join(args.dir) if args.dir else "./runs/*/model, ./models/*"
        print(f"no models found (looked in {where} and ${pretrained.MODELS_ENV})")
        return
    header = ("name", "network", "shape", "classes", "parameters", "steps", "process", "where")
    rows = []
    for folder, where in shipped + local:
        try:
            d = pretrained.describe(folder)
        except (ValueError, FileNotFoundError) as e:
            rows.append((pretrained.model_name(folder), f"cannot read: {e}", where))
            continue
        rows.append(
            (
                d["name"],
                d["type"],
                "x".join(map(str, d["shape"])),
                str(d["num_classes"] or "-"),
                _count(d["parameters"]),
                "-" if d["steps"] is None else str(d["steps"]),
                f"{d['process']}/{d['prediction']}",
                _where(where),
            )
        )
    table = [r for r in rows if len(r) == len(header)]
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    for row in [header, *rows]:
        if len(row) == len(header):
            print("  ".join(f"{v:<{w}}" for v, w in zip(row, widths)).rstrip())
        else:
            name, problem, where = row
            print(f"{name:<{widths[0]}}  {problem} ({where})")
