"""What each acceleration option buys on the shipped MNIST model: wall-clock per sample on this
machine's CPU cores and Fréchet distance in the shipped classifier's features against MNIST test
images, at equal NFE and at equal time, next to the base model.

    python benchmarks/acceleration.py --quick         # n = 500 per row: about 10 minutes on 2 cores
    python benchmarks/acceleration.py                 # n = 2000
    python benchmarks/acceleration.py --distilled runs/distill_progressive/model_2step ...

Rows: the base sampler (DPM-Solver++(2M), guidance 2, the Karras grid) at 20 NFE and at fewer NFE
(the equal-time references); DeepCache (difflab.acceleration.DeepCache, branch 0) at intervals 2, 3
and 5; DeepCache with first-order forecasting (TaylorSeer-style); int8 (static convolutions,
calibrated along 64 trajectories, + dynamic linear layers; and dynamic linear layers alone); and
each distilled model folder given (sampled with its own settings). Each row samples the same n
labels (cycling 0-9) with the same seeds. "equal time" is the base sampler's FD at the largest NFE
whose time per sample is at most the row's (the speed-up a plain NFE cut gives for the same time).
Targets: caching >= 1.5x faster at <= 10 % worse FD than the base at 20 NFE; a 2-step distilled
model within 1.5x of the base's FD at 20 NFE.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

import difflab
from difflab import data as datasets
from difflab import sampling
from difflab.acceleration import (
    DeepCache,
    along_trajectories,
    quantize,
    uniform_schedule,
    with_network,
)
from difflab.guidance import classifier_free
from difflab.metrics import frechet_distance, mnist_features
from difflab.pretrained.generate import step_grid

SAMPLER, NFE, GUIDANCE = "dpmpp_2m", 20, 2.0
BASE_NFE = (20, 14, 10, 8, 6, 5, 4)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="samples per row")
    p.add_argument("--quick", action="store_true", help="n = 500")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--distilled", nargs="*", default=[], help="distilled model folders")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.quick:
        args.n = 500
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    model = difflab.load("mnist")
    base_denoiser = model.denoiser
    labels = torch.arange(args.n) % model.num_classes
    test = datasets.load("mnist", split="test").x
    g = torch.Generator().manual_seed(args.seed)
    ref = mnist_features(test[torch.randperm(len(test), generator=g)[: args.n]])[0]
    train = datasets.load("mnist", split="train").x
    floor = frechet_distance(
        mnist_features(train[torch.randperm(len(train), generator=g)[: args.n]])[0], ref
    )

    def measure(m, **options) -> tuple[float, float, float]:
        """(seconds per sample, FD, network evaluations per sample) of one row."""
        r = m.generate(args.n, labels, seed=args.seed, batch_size=args.batch_size, **options)
        net = m.denoiser.net if hasattr(m.denoiser, "net") else None
        evals = r.network_evals
        if hasattr(net, "evaluations"):  # a cache: full evaluations per run, guidance doubles
            runs = math.ceil(args.n / args.batch_size)
            evals = net.evaluations / runs * (r.network_evals / r.nfe)
            net.reset_counts()
        return r.seconds / args.n, frechet_distance(mnist_features(r.x)[0], ref), evals

    print(
        f"shipped MNIST model, {SAMPLER} + Karras grid, guidance {GUIDANCE:g}, n = {args.n}, "
        f"{torch.get_num_threads()} threads, batch {args.batch_size}"
    )
    print(f"data floor (test vs train images): FD = {floor:.3f}\n")
    base: dict[int, tuple[float, float]] = {}
    for nfe in BASE_NFE:
        model.denoiser = base_denoiser
        sec, fd, _ = measure(model, sampler=SAMPLER, steps=nfe, guidance=GUIDANCE)
        base[nfe] = (sec, fd)
        print(f"  base at {nfe:>2} NFE: {1000 * sec:7.1f} ms/sample  FD {fd:7.3f}", flush=True)
    ref_sec, ref_fd = base[NFE]

    def equal_time(sec: float) -> str:
        fits = [nfe for nfe, (s, _) in base.items() if s <= sec * 1.02]
        return f"{base[max(fits)][1]:7.3f} ({max(fits):>2})" if fits else f"{'-':>12}"

    rows: list[tuple[str, int, float, float, float]] = []
    nfe = sampling.info(SAMPLER).nfe(NFE)
    for name, cache in [
        ("DeepCache N=2", DeepCache(model.network, uniform_schedule(nfe, 2))),
        ("DeepCache N=3", DeepCache(model.network, uniform_schedule(nfe, 3))),
        ("DeepCache N=5", DeepCache(model.network, uniform_schedule(nfe, 5))),
        ("DeepCache N=3 branch 1", DeepCache(model.network, uniform_schedule(nfe, 3), branch=1)),
        (
            "DeepCache N=3 + forecast 1",
            DeepCache(model.network, uniform_schedule(nfe, 3), forecast=1),
        ),
        (
            "DeepCache N=5 + forecast 1",
            DeepCache(model.network, uniform_schedule(nfe, 5), forecast=1),
        ),
    ]:
        model.denoiser = with_network(base_denoiser, cache)
        rows.append((name, NFE, *measure(model, sampler=SAMPLER, steps=NFE, guidance=GUIDANCE)))
        print(f"  {name}: done", flush=True)

    sigmas = step_grid("karras", NFE, model.objective.process)
    calibrate = along_trajectories(
        lambda net: classifier_free(with_network(base_denoiser, net), GUIDANCE),
        model.shape,
        sigmas,
        sampler=SAMPLER,
        n=64,
        labels=torch.arange(64) % model.num_classes,
    )
    for name, conv in [
        ("int8 static conv + dynamic linear", "static"),
        ("int8 dynamic linear", "none"),
    ]:
        q = quantize(
            model.network, calibrate if conv == "static" else None, conv=conv, linear="dynamic"
        )
        model.denoiser = with_network(base_denoiser, q)
        rows.append((name, NFE, *measure(model, sampler=SAMPLER, steps=NFE, guidance=GUIDANCE)))
        print(f"  {name}: done", flush=True)
    model.denoiser = base_denoiser

    for folder in args.distilled:
        student = difflab.load(folder)
        name = f"{student.config.get('distillation', {}).get('method', 'distilled')} {Path(folder).name}"
        sec, fd, evals = measure(student)
        rows.append((name, student.defaults["steps"], sec, fd, evals))

    print(
        "\n| option | NFE | network evals | ms / sample | speed-up | FD | FD / base | base FD at equal time (NFE) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| base {SAMPLER} | {NFE} | {2 * NFE} | {1000 * ref_sec:.1f} | 1.00x | {ref_fd:.3f} | 1.00 | - |"
    )
    for name, n_fe, sec, fd, evals in rows:
        print(
            f"| {name} | {n_fe} | {evals:.1f} | {1000 * sec:.1f} | {ref_sec / sec:.2f}x | {fd:.3f} | "
            f"{fd / ref_fd:.2f} | {equal_time(sec)} |"
        )
    print()
    for name, _, sec, fd, _ in rows:
        if name.startswith("DeepCache"):
            ok = ref_sec / sec >= 1.5 and fd <= 1.1 * ref_fd
            print(
                f"target caching >= 1.5x at <= 10% worse FD: {name}: {'met' if ok else 'not met'} "
                f"({ref_sec / sec:.2f}x, {100 * (fd / ref_fd - 1):+.1f}% FD)"
            )
    for name, n_fe, _, fd, _ in rows:
        if n_fe == 2 and not name.startswith(("DeepCache", "int8")):
            ok = fd <= 1.5 * ref_fd
            print(
                f"target 2-step distilled within 1.5x of the base's FD at {NFE} NFE: {name}: "
                f"{'met' if ok else 'not met'} ({fd / ref_fd:.2f}x)"
            )


if __name__ == "__main__":
    main()
