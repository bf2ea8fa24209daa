"""Optimized step grids against fixed ones: on exact Gaussian mixtures with held-out noise, and on the
shipped MNIST model by Fréchet distance.

Exact mixtures (ring2d: 8 sharp modes in 2-D; stiff64: 64-D, per-axis std 0.03 .. 1), between the
endpoints sigma_max = 157.4 and sigma_min = 0.01 of the DDPM linear beta table
(``VPDiscrete(schedule="linear")``), for each sampler (euler, dpmpp_2m, unipc) and NFE budget
(4, 5, 6, 8, 10):

  fixed      karras (rho 7), exponential, kl_optimal, and uniform_t with diffusers' "trailing"
             spacing on the VPDiscrete table (which stops above sigma_min by construction)
  direct     difflab.schedules.optimize(method="direct") for that sampler and NFE (its last level
             free in [sigma_min, sigma_max))
  ays        difflab.schedules.optimize(method="ays"): Align Your Steps' KLUB (sampler-independent,
             so computed once per mixture and step count; ends at sigma_min)

Each optimization sees only a calibration batch of starting noises (seed 0) and the exact
probability-flow endpoints from them (mixture.ode); every error printed is on held-out noise (seed
1): the RMSE over samples and coordinates of the sampler's endpoint against mixture.ode(x, sigma_max,
0). "ratio" is the best optimized grid's error over the best fixed grid's (target: <= 0.7, i.e. at
least 30% lower, at NFE <= 8).

MNIST: for every grid shipped in difflab/pretrained/mnist/schedules/ (``difflab schedule optimize
--model mnist``), the Fréchet distance in the shipped MNIST classifier's features (difflab.metrics)
of n samples (labels cycling 0-9, the model's default guidance, seed 2: neither the calibration nor
the held-out noise of the fit) against n test images, next to the fixed grids at the same steps,
with the held-out RMSE the fit recorded in brackets.

    .venv/bin/python benchmarks/schedules.py --quick   # ~10 min on 2 cores
    .venv/bin/python benchmarks/schedules.py           # more samples and evaluations

Tables go to stdout (markdown), progress bars to stderr.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
from torch import Tensor

from difflab.core.processes import VPDiscrete
from difflab.sampling import get, info
from difflab.schedules import OptimizedGrid, optimize
from difflab.schedules import get as get_grid
from difflab.testing.gmm import GaussianMixture, ring2d, stiff

SAMPLERS = ("euler", "dpmpp_2m", "unipc")
BUDGETS = (4, 5, 6, 8, 10)
FIXED = ("karras", "exponential", "kl_optimal", "uniform_t")
MNIST_FIXED = ("karras", "exponential", "kl_optimal")


def _noise(n: int, dim: int, sigma: float, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return sigma * torch.randn(n, dim, generator=g, dtype=torch.float64)


def _rmse(a: Tensor, b: Tensor) -> float:
    return float((a - b).square().mean().sqrt())


def run(args: argparse.Namespace) -> None:
    process = VPDiscrete()
    lo, hi = float(process.sigma_min), float(process.sigma_max)
    mixtures: dict[str, tuple[GaussianMixture, int]] = {
        "ring2d": (ring2d(), args.cal_ring),
        "stiff64": (stiff(64), args.cal_stiff),
    }
    if args.mixtures:
        print(f"# Optimized step grids (sigma_max {hi:.1f}, sigma_min {lo:.4f}; held-out RMSE)\n")
    summary = []
    for name in args.mixtures:
        mixture, n_cal = mixtures[name]
        t0 = time.perf_counter()
        cal = _noise(n_cal, mixture.dim, hi, 0)
        held = _noise(args.held, mixture.dim, hi, 1)
        exact_cal, exact_held = (mixture.ode(x, hi, 0.0, rtol=1e-8).x for x in (cal, held))
        cal_ays = cal[: args.ays_samples]
        common = {
            "sigma_min": lo, "sigma_max": hi, "held_out": held, "progress": not args.no_progress,
        }  # fmt: skip
        ays_grids = {}
        for nfe in args.budgets:
            steps = info("euler").steps_for(nfe)
            if steps >= 2 and steps not in ays_grids:
                ays = optimize(
                    mixture, "euler", nfe, cal_ays, method="ays", sweeps=args.sweeps,
                    candidates=args.candidates, reference=(exact_cal[: len(cal_ays)], exact_held),
                    **common,
                )  # fmt: skip
                ays_grids[steps] = ays.sigmas
        print(f"## {name}\n")
        print("| sampler | NFE | " + " | ".join(FIXED) + " | direct | ays | ratio |")
        print("|---|---:|" + "---:|" * (len(FIXED) + 3))
        for sampler in args.samplers:
            fn = get(sampler)
            for nfe in args.budgets:
                steps = info(sampler).steps_for(nfe)
                row: dict[str, float] = {}
                for grid in FIXED:
                    kw = {"process": process, "spacing": "trailing"} if grid == "uniform_t" else {}
                    sigmas = get_grid(grid)(steps, **kw) if kw else get_grid(grid)(steps, lo, hi)
                    row[grid] = _rmse(fn(mixture, held, sigmas), exact_held)
                row["direct"] = row["ays"] = math.nan
                if steps >= 2:
                    evals = {} if args.max_evals is None else {"max_evals": args.max_evals}
                    direct = optimize(
                        mixture, sampler, nfe, cal, reference=(exact_cal, exact_held), **evals,
                        **common,
                    )  # fmt: skip
                    row["direct"] = direct.held_out_error
                    if steps in ays_grids:
                        row["ays"] = _rmse(fn(mixture, held, ays_grids[steps]), exact_held)
                best_fixed = min(row[g] for g in FIXED)
                best_opt = min(row["direct"], row["ays"])
                ratio = best_opt / best_fixed
                summary.append((name, sampler, nfe, ratio))
                cells = " | ".join(f"{row[k]:.2e}" for k in (*FIXED, "direct", "ays"))
                print(f"| {sampler} | {nfe} | {cells} | {ratio:.2f} |", flush=True)
        print(f"\n({name}: {time.perf_counter() - t0:.0f} s)\n")
    hits = [r for r in summary if r[2] <= 8]
    if hits:
        met = sum(r[3] <= 0.7 for r in hits)
        print(
            f"Target (>= 30% lower than the best fixed grid at NFE <= 8): met in {met}/{len(hits)}."
        )
        for name, sampler, nfe, ratio in hits:
            if ratio > 0.7:
                print(f"  missed: {name} {sampler} at {nfe} NFE, ratio {ratio:.2f}")
        print()


def mnist(args: argparse.Namespace) -> None:
    """Fréchet distance of the shipped MNIST model's samples on fixed grids and its optimized ones."""
    import difflab
    from difflab import data as datasets
    from difflab.metrics import frechet_distance, mnist_features
    from difflab.pretrained import grids as saved

    model = difflab.load("mnist")
    test = datasets.load("mnist", split="test").x
    train = datasets.load("mnist", split="train").x
    g = torch.Generator().manual_seed(0)
    ref = mnist_features(test[torch.randperm(len(test), generator=g)[: args.mnist_n]])[0]
    floor = frechet_distance(
        mnist_features(train[torch.randperm(len(train), generator=g)[: args.mnist_n]])[0], ref
    )
    have = saved.saved_grids(model.folder)
    print(
        f"## mnist (shipped model, guidance {model.defaults['guidance']:g}, labels cycling 0-9; "
        f"n = {args.mnist_n} samples from seed {args.mnist_seed}; data floor FD {floor:.2f})\n"
    )
    print("Fréchet distance in the MNIST classifier's features against the test set; in brackets")
    print("the held-out RMSE against the reference solve, as recorded in the grid file.\n")
    print("| sampler | NFE | " + " | ".join(MNIST_FIXED) + " | optimized | FD ratio |")
    print("|---|---:|" + "---:|" * (len(MNIST_FIXED) + 2))
    for sampler in args.mnist_samplers:
        for nfe in args.budgets:
            name = saved.grid_name(sampler, nfe)
            if name not in have:
                continue
            path = saved.grid_path(model.folder, sampler, nfe)
            record = OptimizedGrid.from_json(path.read_text())
            steps = len(record.sigmas) - 1
            fd = {}
            for grid in (*MNIST_FIXED, name):
                x = model.sample(
                    args.mnist_n, sampler=sampler, schedule=grid, seed=args.mnist_seed,
                    **({} if grid == name else {"steps": steps}),
                )  # fmt: skip
                fd[grid] = frechet_distance(mnist_features(x)[0], ref)
            rmse = {**{k: v[1] for k, v in record.fixed.items()}, name: record.held_out_error}
            cells = " | ".join(f"{fd[k]:.2f} ({rmse[k]:.3f})" for k in (*MNIST_FIXED, name))
            ratio = fd[name] / min(fd[k] for k in MNIST_FIXED)
            print(f"| {sampler} | {nfe} | {cells} | {ratio:.2f} |", flush=True)
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and evaluations")
    parser.add_argument("--mixtures", nargs="*", default=["ring2d", "stiff64"])
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    parser.add_argument("--budgets", nargs="+", type=int, default=list(BUDGETS))
    parser.add_argument(
        "--mnist-samplers", nargs="*", default=list(SAMPLERS), help="none: skip MNIST"
    )
    parser.add_argument("--mnist-n", type=int, default=None, help="MNIST samples per FD")
    parser.add_argument("--mnist-seed", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.cal_ring, args.cal_stiff, args.held, args.max_evals = 256, 256, 512, 200
        args.ays_samples, args.sweeps, args.candidates = 24, 2, 6
        args.mnist_n = args.mnist_n or 250
    else:
        args.cal_ring, args.cal_stiff, args.held, args.max_evals = 1024, 1024, 2048, None
        args.ays_samples, args.sweeps, args.candidates = 64, 3, 12
        args.mnist_n = args.mnist_n or 1000
    run(args)
    if args.mnist_samplers:
        mnist(args)


if __name__ == "__main__":
    sys.exit(main())
