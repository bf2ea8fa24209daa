"""The difflab command line. ``difflab --help`` lists the commands; each has its own ``--help``.

Bad input exits with status 2 and a one-line reason, never a stack trace.
"""

from __future__ import annotations

import argparse
import importlib
import io
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from difflab import sampling, schedules
from difflab.testing import GaussianMixture, checks, random_mixture, ring2d, stiff
from difflab.utils.files import atomic_write_bytes, check_writable
from difflab.utils.images import colormap, panels, save_png, scatter

__all__ = ["main"]

EXACT_MODELS: dict[str, Callable[[], GaussianMixture]] = {
    "ring2d": ring2d,
    "random2d": lambda: random_mixture(2, 6, seed=3, scale=1.5),
    "stiff64": stiff,
}
EXACT_SIGMA_RANGE = (0.002, 80.0)  # the EDM range, which covers these mixtures' scales


class CliError(ValueError):
    """A user error: printed as one line, exit status 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="difflab",
        description="difflab: diffusion models as one correct, fast toolkit. "
        "Every sampler runs on every step grid; quality is judged against exact models.",
        epilog="Example: difflab sample --model ring2d --sampler dpmpp_2m --steps 10 --out ring.png",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "sample",
        help="sample a model and write a PNG",
        description="Sample a model with any registered sampler and step grid. For the exact 2-D "
        "mixtures the PNG shows the true density next to the samples, and the mean log-likelihood of "
        "the samples is compared with that of exact samples (a gap near 0 means the sampler is exact).",
    )
    s.add_argument(
        "--model", default="ring2d", help=f"model name: one of {', '.join(EXACT_MODELS)}"
    )
    s.add_argument("--sampler", default="dpmpp_2m", help="sampler name (see `difflab samplers`)")
    s.add_argument(
        "--steps",
        type=int,
        default=10,
        help="number of grid intervals (NFE depends on the sampler)",
    )
    s.add_argument(
        "--schedule",
        default="karras",
        help="step grid name (see `difflab schedules`), or a grid JSON from `difflab schedule optimize`",
    )
    s.add_argument("--n", type=int, default=2000, help="number of samples")
    s.add_argument("--seed", type=int, default=0, help="seed; each sample has its own generator")
    s.add_argument("--out", default="samples.png", help="output PNG (or .npz for raw samples)")

    o = sub.add_parser(
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

    t = sub.add_parser(
        "train",
        help="train a model from a TOML config",
        description="Train a network from a config (configs/*.toml in the repository) with "
        "section.key=value overrides. The run folder (run.out/run.name) gets config.json, "
        "checkpoints/ (crash-safe; a rerun resumes the latest one bit-identically), metrics.jsonl, "
        "samples/ and, at the end, model/: a model directory `difflab sample --model DIR` loads.",
        epilog="Example: difflab train --config configs/toy_moons.toml run.steps=500 optim.lr=1e-3",
    )
    t.add_argument("--config", required=True, help="TOML or JSON training config")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.lr=1e-3")
    t.add_argument("--run-dir", default=None, help="run folder (default: run.out/run.name)")
    t.add_argument(
        "--fresh", action="store_true", help="start over instead of resuming the latest checkpoint"
    )

    sub.add_parser("samplers", help="list samplers with their order, NFE and stochasticity")
    sub.add_parser("schedules", help="list step grids")

    c = sub.add_parser(
        "check-sampler",
        help="judge any sampler against the exact probability-flow ODE",
        description="Import module:function (a sampler with difflab's calling convention "
        "fn(denoiser, x, sigmas, **options)) and report its measured convergence order, NFE per step "
        "count, batch invariance and endpoint error against the exact flow of a Gaussian mixture.",
    )
    c.add_argument("target", help="module:function, or the name of a registered difflab sampler")
    c.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32, 64], help="step counts")
    return p


def _model(name: str) -> GaussianMixture:
    if name not in EXACT_MODELS:
        raise CliError(f"unknown model {name!r}; available: {', '.join(EXACT_MODELS)}")
    return EXACT_MODELS[name]()


def _lookup(fn: Callable[[str], object], name: str) -> object:
    try:
        return fn(name)
    except ValueError as e:
        raise CliError(str(e)) from None


def cmd_sample(args: argparse.Namespace) -> None:
    model = _model(args.model)
    sampler = _lookup(sampling.get, args.sampler)
    grid_fn = _grid(args.schedule)
    if args.steps < 1:
        raise CliError(f"--steps must be >= 1, got {args.steps}")
    if args.n < 1:
        raise CliError(f"--n must be >= 1, got {args.n}")
    out = args.out
    if not str(out).endswith((".png", ".npz")):
        raise CliError(f"--out must end in .png or .npz, got {out!r}")
    try:
        check_writable(out)
        sigmas = grid_fn(args.steps, *EXACT_SIGMA_RANGE)
    except ValueError as e:
        raise CliError(str(e)) from None
    if len(sigmas) != args.steps + 1:
        raise CliError(
            f"the grid {args.schedule} has {len(sigmas) - 1} steps, not --steps {args.steps}"
        )

    gens = sampling.generators(args.seed, args.n)
    x = sampling.randn((args.n, model.dim), gens, torch.float64) * sigmas[0]
    options = (
        {"generator": sampling.generators(args.seed + 1, args.n)}
        if sampling.info(args.sampler).stochastic
        else {}
    )
    counter = checks.CountingDenoiser(model)  # the NFE as spent, adaptive samplers included
    start = time.perf_counter()
    samples = sampler(counter, x, sigmas, **options)
    seconds = time.perf_counter() - start
    nfe = counter.calls

    exact = model.sample(args.n, generator=torch.Generator().manual_seed(args.seed))
    ll, ll_exact = float(model.log_prob(samples).mean()), float(model.log_prob(exact).mean())
    summary = (
        f"{args.sampler} on {args.schedule} grid: {args.steps} steps = {nfe} NFE, {args.n} samples "
        f"in {seconds:.2f} s; mean log-likelihood {ll:.3f} vs exact samples {ll_exact:.3f} "
        f"(gap {ll_exact - ll:+.3f} nats)"
    )
    if out.endswith(".npz"):
        buf = io.BytesIO()
        np.savez(buf, samples=samples.numpy(), sigmas=sigmas.numpy())
        atomic_write_bytes(out, buf.getvalue())
    elif model.dim != 2:
        raise CliError(f"a PNG needs a 2-D model; {args.model} is {model.dim}-D (use --out x.npz)")
    else:
        save_png(_density_figure(model, samples.numpy(), exact.numpy(), summary, args), out)
    print(summary)
    print(f"wrote {out}")


def _density_figure(
    model: GaussianMixture,
    samples: np.ndarray,
    exact: np.ndarray,
    summary: str,
    args: argparse.Namespace,
) -> object:
    lo, hi = np.percentile(exact, [0.5, 99.5], axis=0)
    pad = 0.15 * (hi - lo).max()
    extent = (lo[0] - pad, hi[0] + pad, lo[1] - pad, hi[1] + pad)
    size = 320
    xs = np.linspace(extent[0], extent[1], size)
    ys = np.linspace(extent[3], extent[2], size)
    grid = torch.tensor(np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2))
    density = model.log_prob(grid).exp().reshape(size, size).numpy()
    return panels(
        [
            ("true density p(x)", colormap(np.sqrt(density / density.max()))),
            (
                f"{len(samples)} samples: {args.sampler}, {args.steps} steps",
                scatter(samples, extent, size),
            ),
        ],
        caption=summary.split(";")[1].strip() if ";" in summary else "",
    )


def _grid(name: str) -> Callable[..., torch.Tensor]:
    """A grid by name, or the grid saved in a JSON file by `difflab schedule optimize`."""
    if not name.endswith(".json"):
        return _lookup(schedules.get, name)
    try:
        saved = schedules.OptimizedGrid.from_json(Path(name).read_text())
    except (OSError, ValueError, KeyError) as e:
        raise CliError(f"cannot read the grid {name}: {e}") from None
    return lambda steps, sigma_min, sigma_max: saved.sigmas


def cmd_schedule(args: argparse.Namespace) -> None:
    model = _model(args.model)
    if args.n < 2:
        raise CliError(f"--n must be >= 2, got {args.n}")
    try:
        check_writable(args.out)
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
    atomic_write_bytes(args.out, result.to_json().encode())
    print(f"wrote {args.out}")


def cmd_samplers(args: argparse.Namespace) -> None:
    print(f"{'name':22} {'order':>5} {'NFE(10)':>8} {'stoch':>6}  summary")
    for name in sampling.available():
        i = sampling.info(name)
        alias = "" if i.name == name else f" (alias of {i.name})"
        nfe = "adaptive" if i.adaptive else str(i.nfe(10))
        stoch = "yes" if i.stochastic else "no"
        print(f"{name:22} {i.order:5d} {nfe:>8} {stoch:>6}  {i.summary}{alias}")


def cmd_schedules(args: argparse.Namespace) -> None:
    for name in schedules.available():
        doc = (schedules.get(name).__doc__ or "").strip().splitlines()
        print(f"{name:18} {doc[0] if doc else ''}")


def cmd_check_sampler(args: argparse.Namespace) -> None:
    target = args.target
    if ":" in target:
        module, _, attr = target.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise CliError(f"cannot import {target}: {e}") from None
    else:
        fn = _lookup(sampling.get, target)
        if sampling.info(target).stochastic:
            raise CliError(
                f"{target} is stochastic; check-sampler measures convergence to the exact ODE flow"
            )
    print(checks.check_sampler(fn, target, steps=tuple(args.steps)))


def cmd_train(args: argparse.Namespace) -> None:
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
            training={"config": trainer.config, "steps": trainer.step},
        )
        print(f"wrote {folder}")


COMMANDS = {
    "sample": cmd_sample,
    "schedule": cmd_schedule,
    "samplers": cmd_samplers,
    "schedules": cmd_schedules,
    "check-sampler": cmd_check_sampler,
    "train": cmd_train,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except CliError as e:
        print(f"difflab {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
