"""Inverse problems, measured: every method against the exact posterior of a Gaussian mixture at several
NFE and particle counts (DPS's bias included), then MNIST inpainting and 4x super-resolution with the
shipped model as the prior.

    python benchmarks/inverse.py --quick          # ~6 min on 2 busy cores: MNIST at 25 NFE
    python benchmarks/inverse.py                  # ~18 min: 200 NFE on the mixture, MNIST at 50
    python benchmarks/inverse.py --skip-mnist     # the exact-mixture tables only

Exact-mixture part: difflab.testing.projection_problem() (also the problem of tests/test_restoration.py):
a 3-component diagonal mixture in R^4 measured through a random 2 x 4 projection with noise 0.2, whose
posterior has two modes 3.3 apart with weights 0.65 / 0.35; p(y) and p(x0 | y) are closed forms. Each method draws n
posterior samples from the same start noise on a Karras grid 80 -> 0.005 -> 0; the columns are

    mean err   ||mean of the samples - exact posterior mean||
    LL gap     E_samples[log p(x0 | y)] - E_exact[log p(x0 | y)] (nats; 0 = right typical set,
               > 0 samples too concentrated, < 0 samples off the posterior); the exact term from 10^5 draws

SMC rows run G independent groups of K particles: mean err is the RMS over groups of each group's
error (the error of one K-particle run), LL gap is over all G K particles, "min ESS" the smallest
effective sample size over steps and groups, and log Z the mean estimate of log p(y) (exact value in
the header). Floors: n exact posterior samples, and the prior (no measurement). The "DDPM chain" row
is SMC's target without the measurement: the unconditional DDPM chain (ddim_eta) on the same grid,
its LL gap against exact prior samples (first-order discretization error).

MNIST part: the first n test images, measured with noise 0.05 (images in [-1, 1]) by the center mask
(inpainting) and by 4 x 4 average pooling (super-resolution); each method restores them with the
shipped class-conditional model used unconditionally (label -1). PSNR (dB, images clipped to [-1, 1],
peak 2) against the truth and the class accuracy of the restorations under the shipped MNIST
classifier (the truth's accuracy is the ceiling, the measurement's A^+ y the baseline). One sample
per image (SMC: one particle drawn from its final set). A PNG grid shows truth | measurement | each
method for the first 8 images of each task.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from difflab import sampling, schedules
from difflab.restoration import Matrix, Measurement, ddrm, dps, pigdm, smc
from difflab.testing import projection_problem


def mixture_problem() -> dict[str, Any]:
    """projection_problem() with its operator, exact posterior and the posterior's reference
    log-likelihood (10^5 exact draws)."""
    lg = projection_problem()
    post = lg.posterior
    exact = post.sample(100_000, generator=torch.Generator().manual_seed(1))
    return {
        "prior": lg.prior,
        "op": Matrix(lg.matrix),
        "y": lg.y[None],
        "noise": lg.noise_std,
        "post": post,
        "ref": float(post.log_prob(exact).mean()),
        "log_py": lg.log_evidence,
    }


def score(p: dict[str, Any], samples: torch.Tensor) -> tuple[float, float]:
    err = float((samples.mean(0) - p["post"].mean).norm())
    return err, float(p["post"].log_prob(samples).mean()) - p["ref"]


def mixture_tables(nfes: list[int], n: int, particles: list[int]) -> None:
    p = mixture_problem()
    prior, op, noise = p["prior"], p["op"], p["noise"]
    print(
        f"## Exact mixture: 3 components in R^4, random 2 x 4 projection, noise {noise}; posterior "
        f"weights {', '.join(f'{w:.2f}' for w in p['post'].weights.tolist())}; "
        f"log p(y) = {p['log_py']:.3f}\n"
    )
    print("| method | setting | NFE | mean err | LL gap | min ESS | log Z | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    floor = score(p, p["post"].sample(n, generator=torch.Generator().manual_seed(3)))
    print(f"| exact posterior | {n} samples | - | {floor[0]:.3f} | {floor[1]:+.3f} | | | |")
    pri = score(p, prior.sample(n, generator=torch.Generator().manual_seed(4)))
    print(f"| prior (no measurement) | {n} samples | - | {pri[0]:.3f} | {pri[1]:+.3f} | | | |")
    prior_ref = float(
        prior.log_prob(prior.sample(100_000, generator=torch.Generator().manual_seed(8))).mean()
    )
    runs: list[tuple[str, str, Callable[..., Any], dict[str, Any]]] = [
        ("dps", "zeta 0.1", dps, {"zeta": 0.1}),
        ("dps", "zeta 0.3", dps, {"zeta": 0.3}),
        ("dps", "zeta 1 (paper)", dps, {"zeta": 1.0}),
        ("pigdm", "DDIM eta 1, c 1", pigdm, {}),
        ("ddrm", "eta 0.85, eta_b 1 (paper)", ddrm, {}),
        ("ddrm", "eta 0, eta_b 1", ddrm, {"eta": 0.0}),
    ]
    for nfe in nfes:
        sigmas = schedules.get("karras")(nfe, 0.005, 80.0)
        start = torch.randn(n, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        x, y = start * float(sigmas[0]), p["y"].expand(n, 2)
        chain = sampling.get("ddim_eta")(
            prior, x, sigmas, generator=torch.Generator().manual_seed(6), final="denoised"
        )
        chain_gap = float(prior.log_prob(chain).mean()) - prior_ref
        print(
            f"| DDPM chain, no measurement | LL gap vs the prior | {nfe} | | {chain_gap:+.3f} | | | |"
        )
        for name, setting, fn, options in runs:
            t = time.perf_counter()
            out = fn(
                prior,
                Measurement(op, y, noise),
                x,
                sigmas,
                generator=torch.Generator().manual_seed(7),
                **options,
            )
            err, gap = score(p, out)
            print(
                f"| {name} | {setting} | {nfe} | {err:.3f} | {gap:+.3f} | | | "
                f"{time.perf_counter() - t:.1f} |"
            )
        for k in particles:
            groups = max(2, 16384 // k)
            xs = torch.randn(
                groups * k, 4, generator=torch.Generator().manual_seed(k), dtype=torch.float64
            )
            t = time.perf_counter()
            res = smc(
                prior, Measurement(op, p["y"].expand(groups, 2), noise), xs * float(sigmas[0]),
                sigmas, particles=k, generator=torch.Generator().manual_seed(k + 1),
            )  # fmt: skip
            seconds = time.perf_counter() - t
            means = res.x.view(groups, k, 4).mean(1)
            rms = float((means - p["post"].mean).norm(dim=1).square().mean().sqrt())
            gap = score(p, res.x)[1]
            print(
                f"| smc | {k} particles x {groups} groups | {nfe} | {rms:.3f} | {gap:+.3f} | "
                f"{float(res.ess.min()):.1f} | {float(res.log_evidence.mean()):.3f} | {seconds:.1f} |"
            )
        sys.stdout.flush()


def mnist_tables(n: int, nfe: int, particles: int, zeta: float, grid_out: str, seed: int) -> None:
    import difflab
    from difflab import data
    from difflab.data import to_uint8
    from difflab.metrics import class_accuracy
    from difflab.pretrained.generate import step_grid
    from difflab.restoration.restore import measure, psnr, restore, shown, task_operator
    from difflab.utils.images import image_grid, save_png

    model = difflab.load("mnist")
    truth, labels = data.load("mnist", split="test")[slice(0, n)]
    cond = {"labels": torch.full((n,), -1)}
    d = model.defaults
    sigmas = step_grid("karras", nfe, model.process, d.get("sigma_min"), d.get("sigma_max"))
    methods: list[tuple[str, dict[str, Any]]] = [
        ("ddrm", {}),
        ("pigdm", {}),
        ("dps", {"zeta": zeta}),
        ("smc", {"particles": particles}),
    ]
    print(
        f"\n## MNIST: first {n} test images, noise 0.05, shipped model unconditional (label -1), "
        f"Karras grid {nfe} NFE\n"
    )
    print("| task | method | setting | PSNR (dB) | class accuracy | seconds |")
    print("|---|---|---|---:|---:|---:|")
    tiles = []
    for task, kind in (("inpaint", "center mask"), ("superres", "4x average pooling")):
        op = task_operator(task, model.shape, mask_kind="center", factor=4)
        y = measure(op, truth, 0.05, seed=seed)
        seen = shown(op, y)
        print(f"| {task} ({kind}) | truth | | | {class_accuracy(truth, labels):.3f} | |")
        print(
            f"| {task} | measurement A^+ y | | {float(psnr(seen, truth).mean()):.2f} | "
            f"{class_accuracy(seen.clamp(-1, 1), labels):.3f} | |"
        )
        row = [truth[:8], seen[:8]]
        for name, options in methods:
            t = time.perf_counter()
            with torch.no_grad():
                out = restore(
                    model.denoiser,
                    Measurement(op, y, 0.05),
                    sigmas,
                    name,
                    seed=seed + 1,
                    cond=cond,
                    **options,
                )
            seconds = time.perf_counter() - t
            setting = ", ".join(f"{k} {v}" for k, v in options.items())
            print(
                f"| {task} | {name} | {setting} | {float(psnr(out, truth).mean()):.2f} | "
                f"{class_accuracy(out.clamp(-1, 1), labels):.3f} | {seconds:.0f} |"
            )
            sys.stdout.flush()
            row.append(out[:8])
        tiles.append(torch.stack(row, 1))  # [8, columns, 1, 28, 28]
    grid = torch.cat(tiles).flatten(0, 1).clamp(-1, 1)
    columns = 2 + len(methods)
    save_png(image_grid(to_uint8(grid).numpy(), nrow=columns, scale=2), grid_out)
    print(
        f"\nwrote {grid_out}: rows = 8 inpainting then 8 super-resolution images; columns = truth, "
        f"measurement, {', '.join(m for m, _ in methods)}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="mixture NFE 25/50/100; MNIST 25 NFE")
    p.add_argument("--skip-mnist", action="store_true")
    p.add_argument("--samples", type=int, default=2000, help="posterior samples per mixture row")
    p.add_argument("--images", type=int, default=32, help="MNIST test images (default 32)")
    p.add_argument("--mnist-nfe", type=int, default=None, help="default 50; quick 25")
    p.add_argument("--particles", type=int, default=None, help="MNIST SMC particles (4; quick 2)")
    p.add_argument("--zeta", type=float, default=1.0, help="DPS step size on MNIST (paper: 1)")
    p.add_argument("--grid", default="inverse_mnist.png", help="PNG grid of the MNIST restorations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    nfes = [25, 50, 100] if args.quick else [25, 50, 100, 200]
    begin = time.perf_counter()
    mixture_tables(nfes, args.samples, [16, 256, 4096])
    print(f"\n(exact-mixture part: {time.perf_counter() - begin:.0f} s)")
    if not args.skip_mnist:
        begin = time.perf_counter()
        mnist_tables(
            args.images,
            args.mnist_nfe or (25 if args.quick else 50),
            args.particles or (2 if args.quick else 4),
            args.zeta,
            args.grid,
            args.seed,
        )
        print(f"(MNIST part: {time.perf_counter() - begin:.0f} s)")


if __name__ == "__main__":
    main()
