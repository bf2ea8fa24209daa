"""What each acceleration option buys on the shipped MNIST model: wall-clock per sample on this
machine's CPU cores and Fréchet distance in the shipped classifier's features against MNIST test
images, at equal NFE and at equal time, next to the base model.

    python benchmarks/acceleration.py --quick     # n = 200 per row: ~10 min on 2 free cores
    python benchmarks/acceleration.py             # n = 2000
    python benchmarks/acceleration.py --distilled runs/distill_progressive/model_2step ...

Rows: the base sampler (DPM-Solver++(2M), guidance 2, the Karras grid) at 20 NFE and at fewer NFE
(the equal-time references); DeepCache (difflab.acceleration.DeepCache, branch 0) at intervals 2
and 3, and at 3 and 5 with first-order forecasting (TaylorSeer-style); int8 (static convolutions
calibrated along 64 trajectories + dynamic linear layers); and each distilled model folder given
(sampled with its own settings, guidance baked in). Every row samples the same n labels (cycling
0-9) from the same seeds, so rows differ by the method, not the noise: their FD differences are far
less noisy than the FDs themselves (which carry a finite-n bias; the data floor shows its size).

Time: the machine is shared, so the time per sample of each row is the median of ``--rounds``
timings of one batch of ``--time-batch`` samples, the rows taken in turn in each round (a slow
spell of the machine hits every row alike); the FD pass's own time is not used. "equal time" is the
base sampler's FD at the largest NFE whose time per sample is at most the row's. Targets: caching
>= 1.5x faster at <= 10 % worse FD than the base at 20 NFE; a 2-step distilled model within 1.5x of
the base's FD at 20 NFE.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import difflab
from difflab import data as datasets
from difflab import sampling
from difflab.acceleration import (
    DeepCache,
    along_trajectories,
    quantize,
    uniform_refresh,
    with_network,
)
from difflab.guidance import classifier_free
from difflab.metrics import frechet_distance, mnist_features
from difflab.pretrained.generate import step_grid

SAMPLER, NFE, GUIDANCE = "dpmpp_2m", 20, 2.0
BASE_NFE = (20, 10, 8, 6)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="samples per row")
    p.add_argument("--quick", action="store_true", help="n = 200, 20 samples per timing")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--time-batch", type=int, default=50, help="samples per timing")
    p.add_argument("--rounds", type=int, default=3, help="timings per row (median)")
    p.add_argument("--distilled", nargs="*", default=[], help="distilled model folders")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.quick:
        args.n, args.time_batch = 200, 20
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    model = difflab.load("mnist")
    base = model.denoiser
    test = datasets.load("mnist", split="test").x
    g = torch.Generator().manual_seed(args.seed)
    ref = mnist_features(test[torch.randperm(len(test), generator=g)[: args.n]])[0]
    train = datasets.load("mnist", split="train").x
    floor = frechet_distance(
        mnist_features(train[torch.randperm(len(train), generator=g)[: args.n]])[0], ref
    )
    nfe = sampling.info(SAMPLER).nfe(NFE)

    # each row: (name, NFE, sample(n, batch_size) -> Samples, the cache when there is one)
    Row = tuple[str, int, Callable[[int, int], object], object]

    def with_net(net: torch.nn.Module, steps: int = NFE) -> Callable[[int, int], object]:
        den = with_network(base, net) if net is not None else base

        def sample(n: int, batch: int) -> object:
            model.denoiser = den
            try:
                labels = torch.arange(n) % model.num_classes
                options = {"sampler": SAMPLER, "steps": steps, "guidance": GUIDANCE}
                return model.generate(n, labels, seed=args.seed, batch_size=batch, **options)
            finally:
                model.denoiser = base

        return sample

    rows: list[Row] = [(f"base {SAMPLER}, {s} NFE", s, with_net(None, s), None) for s in BASE_NFE]
    for name, cache in [
        ("DeepCache N=2", DeepCache(model.network, uniform_refresh(nfe, 2))),
        ("DeepCache N=3", DeepCache(model.network, uniform_refresh(nfe, 3))),
        (
            "DeepCache N=3 + forecast 1",
            DeepCache(model.network, uniform_refresh(nfe, 3), forecast=1),
        ),
        (
            "DeepCache N=5 + forecast 1",
            DeepCache(model.network, uniform_refresh(nfe, 5), forecast=1),
        ),
    ]:
        rows.append((name, NFE, with_net(cache), cache))
    calibrate = along_trajectories(
        lambda net: classifier_free(with_network(base, net), GUIDANCE),
        model.shape,
        step_grid("karras", NFE, model.process),
        sampler=SAMPLER,
        n=64,
        labels=torch.arange(64) % model.num_classes,
    )
    static = quantize(model.network, calibrate, conv="static", linear="dynamic")
    rows.append(("int8 static conv + dynamic linear", NFE, with_net(static), None))
    for folder in args.distilled:
        student = difflab.load(folder)
        method = student.config.get("distillation", {}).get("method", "distilled")

        def sample(n: int, batch: int, student=student) -> object:
            labels = torch.arange(n) % student.num_classes
            return student.generate(n, labels, seed=args.seed, batch_size=batch)

        rows.append((f"{method} {Path(folder).name}", student.defaults["steps"], sample, None))

    print(
        f"shipped MNIST model, {SAMPLER} + Karras grid, guidance {GUIDANCE:g}, n = {args.n}, "
        f"{torch.get_num_threads()} threads; data floor (test vs train images): FD = {floor:.3f}",
        flush=True,
    )
    fd, evals = {}, {}
    for name, _, sample, cache in rows:
        r = sample(args.n, args.batch_size)
        fd[name] = frechet_distance(mnist_features(r.x)[0], ref)
        evals[name] = r.network_evals
        if cache is not None:  # full evaluations per run; guidance evaluates 2 per call
            runs = math.ceil(args.n / args.batch_size)
            evals[name] = cache.evaluations / runs * (r.network_evals / r.nfe)
            cache.reset_counts()
        print(f"  {name}: FD {fd[name]:.3f}", flush=True)
    times: dict[str, list[float]] = {name: [] for name, *_ in rows}
    for _ in range(args.rounds):
        for name, _, sample, _ in rows:
            t0 = time.perf_counter()
            sample(args.time_batch, args.time_batch)
            times[name].append((time.perf_counter() - t0) / args.time_batch)
    sec = {name: statistics.median(t) for name, t in times.items()}

    base_rows = {steps: name for name, steps, *_ in rows[: len(BASE_NFE)]}
    ref_sec, ref_fd = sec[rows[0][0]], fd[rows[0][0]]  # the base at 20 NFE

    def equal_time(s: float) -> str:
        fits = [steps for steps, name in base_rows.items() if sec[name] <= s * 1.02]
        return f"{fd[base_rows[max(fits)]]:.3f} ({max(fits)})" if fits else "-"

    print(
        "\n| option | NFE | network evals | ms / sample | speed-up | FD | FD / base | "
        "base FD at equal time (NFE) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for i, (name, steps, _, _) in enumerate(rows):
        print(
            f"| {name} | {steps} | {evals[name]:.1f} | {1000 * sec[name]:.1f} | "
            f"{ref_sec / sec[name]:.2f}x | {fd[name]:.3f} | {fd[name] / ref_fd:.2f} | "
            f"{equal_time(sec[name]) if i else '-'} |"
        )
    print()
    for name, steps, _, _ in rows[len(BASE_NFE) :]:
        speed, worse = ref_sec / sec[name], fd[name] / ref_fd - 1
        if name.startswith("DeepCache"):
            met = "met" if speed >= 1.5 and worse <= 0.1 else "not met"
            print(f"caching >= 1.5x at <= 10% worse FD, {name}: {met} ({speed:.2f}x, {worse:+.1%})")
        elif steps == 2:
            met = "met" if fd[name] <= 1.5 * ref_fd else "not met"
            print(
                f"2-step distilled within 1.5x of the base's FD at {NFE} NFE, {name}: {met} "
                f"({fd[name] / ref_fd:.2f}x)"
            )


if __name__ == "__main__":
    main()
