"""Guidance methods on the shipped class-conditional MNIST model: class accuracy (the shipped MNIST
classifier of difflab.metrics) and Fréchet distance in its feature space against the MNIST test split,
for each method at a few scales, at the same sampler and NFE.

    python benchmarks/guidance.py            # n = 500 per row (about an hour on one CPU core)
    python benchmarks/guidance.py --quick    # n = 100 and fewer scales: checks the script runs

Every row samples the same n labels (cycling 0-9) from the same per-sample noise, with DPM-Solver++(2M)
on the model's Karras grid (--steps, default 15 = 15 NFE); CFG++ uses Euler/DDIM, the sampler it is
exact for, next to unguided and CFG Euler rows on the same grid. "evals" is the denoiser (network)
evaluations per sample, over all branches; rows marked "+ grad" also backpropagate every step.
Guides: autoguidance's weak model is the shipped ``mnist_small`` (16 instead of 32 channels, trained
600 instead of 2457 steps); classifier and reward guidance use the shipped noise-conditional classifier
(difflab/pretrained/mnist_noisy_classifier) on the unconditional (null-label) model, the reward being
log p(c | x0) under that classifier at sigma = 0.002. The data floor is the Fréchet distance between n
test and n training images (the finite-n bias shared by every row).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

import difflab
from difflab import data as datasets
from difflab import guidance as G
from difflab.metrics import class_accuracy, frechet_distance, mnist_features
from difflab.pretrained.generate import sample_batched, step_grid

Builder = Callable[[Tensor], tuple[Callable[..., Tensor], str]]  # sigmas -> (denoiser, sampler)


def rows(model: Any, weak: Any, quick: bool) -> list[tuple[str, str, Builder]]:
    """(method, setting, builder) for every row of the table."""
    clf = G.load_noisy_classifier()
    pick = (lambda full, short: short) if quick else (lambda full, short: full)
    out: list[tuple[str, str, Builder]] = []

    def add(method: str, setting: str, build: Builder) -> None:
        out.append((method, setting, build))

    add("none", "w = 1", lambda s, d=model.denoiser: (d, "dpmpp_2m"))
    for w in pick([1.5, 2.0, 3.0, 5.0], [2.0, 5.0]):
        add(
            "CFG",
            f"w = {w:g}",
            lambda s, w=w, d=model.denoiser: (G.classifier_free(d, w), "dpmpp_2m"),
        )
    for w in pick([3.0, 5.0], [5.0]):
        rule = G.CFG(w, rescale=0.7)
        add(
            "CFG + rescale",
            f"w = {w:g}, phi = 0.7",
            lambda s, r=rule, d=model.denoiser: (G.classifier_free(d, r), "dpmpp_2m"),
        )
        add(
            "CFG, interval",
            f"w = {w:g}, sigma in [0.3, 5]",
            lambda s, w=w, d=model.denoiser: (G.classifier_free(d, w, (0.3, 5.0)), "dpmpp_2m"),
        )
        apg = G.APG(w, eta=0.0, momentum=-0.5)
        add(
            "APG",
            f"w = {w:g}, eta 0, beta -0.5",
            lambda s, r=apg, d=model.denoiser: (G.classifier_free(d, r), "dpmpp_2m"),
        )
    for w in pick([2.0, 3.0, 5.0], [3.0]):
        add(
            "CFG-Zero*",
            f"w = {w:g}, first step zeroed",
            lambda s, w=w, d=model.denoiser: (
                G.classifier_free(d, G.CFGZeroStar(w, zero_init=float(s[0]))),
                "dpmpp_2m",
            ),
        )
    add("none (euler)", "w = 1", lambda s, d=model.denoiser: (d, "euler"))
    add("CFG (euler)", "w = 2", lambda s, d=model.denoiser: (G.classifier_free(d, 2.0), "euler"))
    for lam in pick([0.2, 0.4, 0.6], [0.4]):
        add(
            "CFG++ (euler)",
            f"lambda = {lam:g}",
            lambda s, lam=lam, d=model.denoiser: (G.cfg_pp(d, lam, s), "euler"),
        )
    for w in pick([2.0, 3.0], [3.0]):

        def not_next(s: Tensor, w: float = w, d: Any = model.denoiser) -> tuple[Any, str]:
            comp = G.composable(d, [w, -1.0])
            return (
                lambda x, sig, labels: comp(
                    x, sig, labels=torch.stack([labels, (labels + 1) % 10], 1)
                )
            ), "dpmpp_2m"

        add("AND/NOT", f"c (w {w:g}) AND NOT c+1 (w -1)", not_next)
    for w in pick([1.5, 2.0, 3.0], [2.0]):
        add(
            "autoguidance",
            f"w = {w:g}, weak mnist_small",
            lambda s, w=w: (G.autoguidance(model.denoiser, weak.denoiser, w), "dpmpp_2m"),
        )
    for w in pick([1.5, 2.0, 3.0], [2.0]):
        add(
            "PAG",
            f"w = {w:g} (s = {w - 1:g}), all attention",
            lambda s, w=w: (G.perturbed_attention(model.denoiser, w), "dpmpp_2m"),
        )
    for scale in pick([1.0, 2.0, 4.0], [2.0]):
        add(
            "classifier",
            f"s = {scale:g}, unconditional model + grad",
            lambda s, sc=scale: (G.classifier_guidance(model.denoiser, clf, sc), "dpmpp_2m"),
        )

    def log_p(x0: Tensor, labels: Tensor) -> Tensor:
        return clf(x0, 0.002).log_softmax(1).gather(1, labels[:, None])[:, 0]

    for lam in pick([1.0, 3.0], [3.0]):
        add(
            "reward",
            f"lambda = {lam:g}, r = log p(c | x0), unconditional + grad",
            lambda s, lam=lam: (
                G.reward_guidance(model.denoiser, log_p, lam, conditional=False),
                "dpmpp_2m",
            ),
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=500, help="samples per row")
    p.add_argument("--steps", type=int, default=15, help="grid steps (NFE of dpmpp_2m and euler)")
    p.add_argument("--quick", action="store_true", help="n = 100 and fewer scales")
    p.add_argument(
        "--only", nargs="*", default=None, help="run only these methods (names as printed)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.quick:
        args.n = 100
    torch.set_num_threads(args.threads)

    model, weak = difflab.load("mnist"), difflab.load("mnist_small")
    test = datasets.load("mnist", split="test").x
    train = datasets.load("mnist", split="train").x
    g = torch.Generator().manual_seed(args.seed)
    ref = mnist_features(test[torch.randperm(len(test), generator=g)[: args.n]])[0]
    floor = frechet_distance(
        mnist_features(train[torch.randperm(len(train), generator=g)[: args.n]])[0], ref
    )
    labels = torch.arange(args.n) % 10
    sigmas = step_grid("karras", args.steps, model.objective.process)
    print(
        f"mnist, n = {args.n} per row, labels cycling 0-9, {args.steps} steps on the Karras grid "
        f"(sigma {float(sigmas[0]):g} .. {float(sigmas[-2]):g}); data floor FD = {floor:.2f}\n"
    )
    print("| method | setting | sampler | NFE | evals | accuracy | FD | seconds |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for method, setting, build in rows(model, weak, args.quick):
        if args.only and method not in args.only:
            continue
        den, sampler = build(sigmas)
        images = [0]  # network evaluations of the main and the weak model, every branch counted

        def count(module: Any, inputs: tuple, images: list[int] = images) -> None:
            images[0] += len(inputs[0])

        hooks = [m.denoiser.register_forward_pre_hook(count) for m in (model, weak)]
        begin = time.perf_counter()
        try:
            x, nfe, _ = sample_batched(
                den, (args.n, 1, 28, 28), sigmas, sampler, labels, seed=args.seed, batch_size=250
            )
        finally:
            for h in hooks:
                h.remove()
        seconds = time.perf_counter() - begin
        evals = images[0] / args.n
        acc = class_accuracy(x, labels)
        fd = frechet_distance(mnist_features(x)[0], ref)
        print(
            f"| {method} | {setting} | {sampler} | {nfe} | {evals:g} | {acc:.3f} | {fd:.2f} | {seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
