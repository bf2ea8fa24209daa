"""Guidance methods on the shipped class-conditional MNIST model: class accuracy (the shipped
MNIST classifier of difflab.metrics) and Fréchet distance in its feature space against the MNIST
test split, for each method, at the same sampler and NFE.

    python benchmarks/guidance.py            # n = 500 per row: about 1.5 h of one free CPU core
    python benchmarks/guidance.py --n 200    # the run in docs/guidance.md: about 35 min
    python benchmarks/guidance.py --quick    # n = 100, one row per method: checks the script runs
    python benchmarks/guidance.py --only CFG APG "PAG | w = 4"   # some methods or rows only

Every row samples the same n labels (cycling 0-9) from the same per-sample noise, with
DPM-Solver++(2M) on the model's Karras grid (--steps, default 10 = 10 NFE); CFG++ runs on
Euler/DDIM, the sampler it is exact for, next to unguided and CFG Euler rows. "evals" counts the
network evaluations per sample over all branches (for autoguidance and W2SD the weak model's
too; W2SD's NFE column counts the main model's calls, its reflections' included); rows
marked "+ grad" also backpropagate every step (through the classifier; for reward guidance through
the denoiser too).
Guides: the weak model of autoguidance and W2SD is the shipped ``mnist_small`` (16 instead of 32
channels, trained 600 instead of 2457 steps); classifier and reward guidance use the shipped noise-conditional
classifier (difflab/pretrained/mnist_noisy_classifier) on the unconditional (null-label) model, the
reward being log p(c | x0) under that classifier at sigma = 0.002. Accuracy and FD are judged by a
different network (difflab.metrics' classifier). The data floor is the Fréchet distance between n
test and n training images (the finite-n bias shared by every row).
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

import difflab
from difflab import data as datasets
from difflab import guidance as G
from difflab.metrics import class_accuracy, frechet_distance, mnist_features
from difflab.models import perturbed_attention
from difflab.pretrained.generate import sample_batched, step_grid

# the grid -> the (guided) denoiser, or (denoiser, sampler function) for a sampler wrapper (W2SD)
Builder = Callable[[Tensor], Any]


class Guides:
    """The models a row may need, loaded on first use: the main model, autoguidance's weak model
    (the shipped mnist_small) and the noise-conditional classifier."""

    def __init__(self) -> None:
        self.model = difflab.load("mnist")

    @functools.cached_property
    def weak(self) -> Any:
        return difflab.load("mnist_small")

    @functools.cached_property
    def classifier(self) -> Any:
        from difflab.pretrained import load_classifier

        return load_classifier("mnist_noisy_classifier")

    def unconditional(self, x: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        """The null-label model, the base of classifier and reward guidance."""
        return self.model.denoiser(x, sigma)

    def log_p(self, x0: Tensor, labels: Tensor) -> Tensor:
        """The reward r(x0) = log p(c | x0) under the noisy classifier at sigma = 0.002."""
        return self.classifier(x0, 0.002).log_softmax(1).gather(1, labels[:, None])[:, 0]

    def not_next(self, w: float) -> Callable[..., Tensor]:
        """c (weight w) AND NOT c + 1 (weight -1), as a denoiser of the usual labels [B]."""
        comp = G.composable(self.model.denoiser, [w, -1.0])
        return lambda x, s, labels: comp(x, s, labels=torch.stack([labels, (labels + 1) % 10], 1))


def rows(g: Guides, quick: bool) -> list[tuple[str, str, str, Builder]]:
    """(method, setting, sampler, builder) for every row of the table."""
    d = g.model.denoiser
    full = [
        ("none", "w = 1", "dpmpp_2m", lambda s: d),
        ("none", "null label (unconditional)", "dpmpp_2m", lambda s: g.unconditional),
        ("CFG", "w = 2", "dpmpp_2m", lambda s: G.classifier_free(d, 2.0)),
        ("CFG", "w = 4", "dpmpp_2m", lambda s: G.classifier_free(d, 4.0)),
        (
            "CFG + rescale",
            "w = 4, phi = 0.7",
            "dpmpp_2m",
            lambda s: G.classifier_free(d, G.CFG(4.0, rescale=0.7)),
        ),
        (
            "CFG, interval",
            "w = 4, sigma in [0.3, 5]",
            "dpmpp_2m",
            lambda s: G.classifier_free(d, 4.0, (0.3, 5.0)),
        ),
        (
            "APG",
            "w = 4, eta 0, beta -0.5",
            "dpmpp_2m",
            lambda s: G.classifier_free(d, G.APG(4.0, momentum=-0.5)),
        ),
        (
            "CFG-Zero*",
            "w = 4, first step zeroed",
            "dpmpp_2m",
            lambda s: G.classifier_free(d, G.CFGZeroStar(4.0, zero_init=float(s[0]))),
        ),
        ("none", "w = 1", "euler", lambda s: d),
        ("CFG", "w = 2", "euler", lambda s: G.classifier_free(d, 2.0)),
        ("CFG++", "lambda = 0.4", "euler", lambda s: G.cfg_pp(d, 0.4, s)),
        ("CFG++", "lambda = 1", "euler", lambda s: G.cfg_pp(d, 1.0, s)),
        ("AND/NOT", "c (w 2) AND NOT c+1 (w -1)", "dpmpp_2m", lambda s: g.not_next(2.0)),
        (
            "autoguidance",
            "w = 2, weak = mnist_small",
            "dpmpp_2m",
            lambda s: G.autoguidance(d, g.weak.denoiser, 2.0),
        ),
        (
            "autoguidance",
            "w = 3, weak = mnist_small",
            "dpmpp_2m",
            lambda s: G.autoguidance(d, g.weak.denoiser, 3.0),
        ),
        (
            "autoguidance",
            "w = 2, weak = mnist_small",
            "euler",
            lambda s: G.autoguidance(d, g.weak.denoiser, 2.0),
        ),
        (
            "W2SD",
            "weak = mnist_small, every step but the last",
            "euler",  # dpmpp_2m gives the same samples: each stretch between reflections is 1 step
            lambda s: (d, G.W2SD(g.weak.denoiser, "euler")),
        ),
        (
            "W2SD",
            "weak = mnist_small, first 3 steps",
            "dpmpp_2m",
            lambda s: (d, G.W2SD(g.weak.denoiser, "dpmpp_2m", steps=3)),
        ),
        (
            "PAG",
            "w = 2 (s = 1), every attention layer",
            "dpmpp_2m",
            lambda s: perturbed_attention(d, 2.0),
        ),
        (
            "PAG",
            "w = 4 (s = 3), every attention layer",
            "dpmpp_2m",
            lambda s: perturbed_attention(d, 4.0),
        ),
        (
            "classifier",
            "s = 1, null label + grad",
            "dpmpp_2m",
            lambda s: G.classifier_guidance(d, g.classifier, 1.0),
        ),
        (
            "classifier",
            "s = 3, null label + grad",
            "dpmpp_2m",
            lambda s: G.classifier_guidance(d, g.classifier, 3.0),
        ),
        (
            "classifier",
            "s = 6, null label + grad",
            "dpmpp_2m",
            lambda s: G.classifier_guidance(d, g.classifier, 6.0),
        ),
        (
            "reward",
            "lambda = 2, r = log p(c; x0), null label + grad",
            "dpmpp_2m",
            lambda s: G.reward_guidance(d, g.log_p, 2.0, conditional=False),
        ),
    ]
    if quick:  # one row per method
        seen: set[str] = set()
        full = [r for r in full if not (r[0] in seen or seen.add(r[0]))]
    return full


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=500, help="samples per row")
    p.add_argument("--steps", type=int, default=10, help="grid steps (NFE of dpmpp_2m and euler)")
    p.add_argument("--quick", action="store_true", help="n = 100, one row per method")
    p.add_argument(
        "--only",
        nargs="*",
        default=None,
        help='run only these methods, or rows whose "method | setting | sampler" contains the text',
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.quick:
        args.n = 100
    torch.set_num_threads(args.threads)

    guides = Guides()
    model = guides.model
    test = datasets.load("mnist", split="test").x
    train = datasets.load("mnist", split="train").x
    g = torch.Generator().manual_seed(args.seed)
    ref = mnist_features(test[torch.randperm(len(test), generator=g)[: args.n]])[0]
    floor = frechet_distance(
        mnist_features(train[torch.randperm(len(train), generator=g)[: args.n]])[0], ref
    )
    labels = torch.arange(args.n) % 10
    sigmas = step_grid("karras", args.steps, model.process)
    print(
        f"mnist, n = {args.n} per row, labels cycling 0-9, {args.steps} steps on the Karras grid "
        f"(sigma {float(sigmas[0]):g} .. {float(sigmas[-2]):g}); data floor FD = {floor:.2f}\n"
    )
    print("| method | setting | sampler | NFE | evals | accuracy | FD | seconds |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for method, setting, sampler, build in rows(guides, args.quick):
        row = f"{method} | {setting} | {sampler}"
        if args.only and not any(text == method or text in row for text in args.only):
            continue
        built = build(sigmas)
        den, run = built if isinstance(built, tuple) else (built, sampler)
        images = [0]  # network evaluations of the main and the weak model, every branch counted

        def count(module: Any, inputs: tuple, images: list[int] = images) -> None:
            images[0] += len(inputs[0])

        nets = [model] + ([guides.weak] if method in ("autoguidance", "W2SD") else [])
        hooks = [m.denoiser.register_forward_pre_hook(count) for m in nets]
        begin = time.perf_counter()
        try:
            x, nfe, _ = sample_batched(
                den, (args.n, 1, 28, 28), sigmas, run, labels, seed=args.seed, batch_size=250
            )
        finally:
            for h in hooks:
                h.remove()
        seconds = time.perf_counter() - begin
        evals = images[0] / args.n
        acc = class_accuracy(x, labels)
        fd = frechet_distance(mnist_features(x)[0], ref)
        cells = f"{nfe} | {evals:g} | {acc:.3f} | {fd:.2f} | {seconds:.0f}"
        print(f"| {method} | {setting} | {sampler} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
