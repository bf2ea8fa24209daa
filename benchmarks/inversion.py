"""Inversion and editing, measured: reconstruction error against NFE for every difflab.inversion
method in float32 and float64, on an exact Gaussian mixture (where the latent is also compared with
the exact probability-flow solution) and on the shipped MNIST model; class edits with the accuracy
of the target class and the distance to the source; a PNG of MNIST inputs, reconstructions and
edits.

    python benchmarks/inversion.py --quick     # 32 MNIST test images (8 in float64), 10 steps
    python benchmarks/inversion.py             # 64 images, 10 and 20 steps

Definitions. Reconstruction error: ||sample(invert(x)) - x|| / ||x|| over the batch (x the state at
sigma_min = 0.002; the grids are Karras grids of `steps` intervals from 80 down to 0.002). NFE:
network evaluations per sample, measured (a guided evaluation at w != 1 counts 2; null-text's
backward passes are listed apart). Latent error (mixture): ||latent - ODE(x, 0.002 -> 80)|| /
||ODE(...)|| against the exact flow (Dormand-Prince at rtol 1e-10), for the unguided methods. Class
edits invert under the source class and sample under target = (source + k) mod C; accuracy is the
target's share by the exact posterior class (mixture) or the shipped MNIST classifier, distance the
RMS per coordinate between edit and source. Every method sees the same images and targets.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import torch

import difflab
from difflab import inversion, schedules
from difflab.core.counting import CountingDenoiser
from difflab.data import load, to_uint8
from difflab.metrics import class_accuracy
from difflab.models.class_embedding import embedding_denoiser, null_embedding
from difflab.testing import GaussianMixture, ring2d, stiff
from difflab.utils.images import image_grid, save_png

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0

# (row name, method, options, guidance); guided methods at w = GUIDED
GUIDED = 2.0
METHODS: list[tuple[str, str, dict[str, Any], float]] = [
    ("ddim", "ddim", {}, 1.0),
    ("ddim refine=3", "ddim", {"refine": 3}, 1.0),
    ("dpmpp_2m", "dpmpp_2m", {}, 1.0),
    ("edict", "edict", {}, 1.0),
    ("edict level=own", "edict", {"level": "own"}, 1.0),
    ("bdia", "bdia", {}, 1.0),
    ("bdia gamma=0", "bdia", {"gamma": 0.0}, 1.0),
    ("ddim w=2", "ddim", {}, GUIDED),
    ("edict w=2", "edict", {}, GUIDED),
    ("edict own w=2", "edict", {"level": "own"}, GUIDED),
    ("bdia w=2", "bdia", {}, GUIDED),
    ("null_text w=2", "null_text", {"iterations": 10}, GUIDED),
    ("null_text refine=3 w=2", "null_text", {"iterations": 10, "refine": 3}, GUIDED),
    ("direct w=2", "direct", {}, GUIDED),
]


class Counter(CountingDenoiser):
    """Counts the denoiser's input rows; ``take(b)`` = network evaluations per sample since the
    last take."""

    def take(self, batch: int) -> float:
        n, self.rows = self.rows / batch, 0
        return n


def grid(steps: int) -> torch.Tensor:
    """``steps`` intervals from SIGMA_MAX to SIGMA_MIN (the Karras grid of steps + 1, its 0 dropped)."""
    return schedules.get("karras")(steps + 1, SIGMA_MIN, SIGMA_MAX)[:-1]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).square().mean().sqrt())


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.2e}" if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{v:.3g}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    for r in cells:
        print("| " + " | ".join(r) + " |")


def null_condition(method: str, null: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {"null": null} if method == "null_text" else {}


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_method(
    counter: Counter,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    method: str,
    options: dict[str, Any],
    guidance: float,
    source: torch.Tensor,
    target: torch.Tensor,
    null: dict[str, torch.Tensor],
) -> dict[str, Any]:
    """Invert, reconstruct and edit; NFE and CPU seconds of each part."""
    begin = time.process_time()
    z = inversion.invert(
        counter,
        x,
        sigmas,
        method=method,
        cond={"labels": source},
        guidance=guidance,
        **null_condition(method, null),
        **options,
    )
    nfe_invert = counter.take(len(x))
    recon = inversion.sample(counter, z)
    nfe_sample = counter.take(len(x))
    edited = inversion.sample(counter, z, cond={"labels": target})
    counter.take(len(x))
    backward = len(z.nulls) * options.get("iterations", 10) if method == "null_text" else 0
    progress(
        f"  {method} {options} w={guidance:g} {x.dtype}: {time.process_time() - begin:.1f} s CPU"
    )
    return {
        "latent": z,
        "recon": recon,
        "edited": edited,
        "nfe": (nfe_invert, nfe_sample, backward),
        "seconds": time.process_time() - begin,
    }


# ------------------------------------------------------------------------------------ mixture


def mixture_class(mixture: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """The exact posterior class argmax_c p(c | x) at sigma = 0."""
    classes = sorted(set(mixture.labels.tolist()))
    logp = torch.stack([mixture.condition(c).log_prob(x.double()) for c in classes], 1)
    logp = logp + torch.log(
        torch.stack([mixture.weights[mixture.labels == c].sum() for c in classes])
    )
    return torch.tensor(classes)[logp.argmax(1)]


def mixture_section(steps_list: list[int], n: int) -> None:
    cases = [("stiff16", stiff(dim=16, components=4)), ("ring2d", ring2d())]
    for name, mixture in cases:
        gen = torch.Generator().manual_seed(0)
        x, comp = mixture.sample(n, generator=gen, return_components=True)
        source = mixture.labels[comp]
        classes = int(mixture.labels.max()) + 1
        target = (source + 1 + torch.arange(n) % (classes - 1)) % classes
        flow = conditional_flow(mixture, x, source)
        counter = Counter(mixture.class_denoiser)
        recon_rows, edit_rows = [], []
        for steps in steps_list:
            for label, method, options, w in METHODS:
                errors = {}
                for dtype in (torch.float64, torch.float32):
                    null = {"log_weights": torch.log(mixture.weights).to(dtype).expand(n, -1)}
                    res = run_method(
                        counter, x.to(dtype), grid(steps), method, options, w, source, target, null
                    )
                    errors[dtype] = relative(res["recon"], x)
                    if dtype == torch.float64:
                        res64 = res
                unguided = w == 1 and method not in ("null_text", "direct")
                recon_rows.append(
                    [
                        label,
                        steps,
                        res64["nfe"][0],
                        res64["nfe"][1],
                        errors[torch.float64],
                        errors[torch.float32],
                        relative(res64["latent"].x, flow) if unguided else "-",
                    ]
                )
                edited = res64["edited"]
                edit_rows.append(
                    [
                        label,
                        steps,
                        float((mixture_class(mixture, edited) == target).double().mean()),
                        float((mixture_class(mixture, res64["recon"]) == source).double().mean()),
                        rms(edited, x),
                    ]
                )
        table(
            f"{name}: reconstruction error against NFE ({n} samples, inverted under their class)",
            [
                "method",
                "steps",
                "NFE invert",
                "NFE sample",
                "error f64",
                "error f32",
                "latent vs flow",
            ],
            recon_rows,
        )
        table(
            f"{name}: class edits (float64; exact posterior class)",
            ["method", "steps", "edit accuracy", "reconstruction accuracy", "RMS to source"],
            edit_rows,
        )


def conditional_flow(
    mixture: GaussianMixture, x: torch.Tensor, source: torch.Tensor
) -> torch.Tensor:
    """ODE(x, sigma_min -> sigma_max) of each sample's class mixture (the w = 1 flow it inverts)."""
    out = torch.empty_like(x)
    for c in source.unique().tolist():
        rows = source == c
        out[rows] = mixture.condition(c).ode(x[rows], SIGMA_MIN, SIGMA_MAX, rtol=1e-10).x
    return out


# ------------------------------------------------------------------------------------ MNIST


def mnist_section(
    steps_list: list[int], n: int, n64: int, out: str, strengths: list[float]
) -> None:
    model = difflab.load("mnist")
    images, labels = load("mnist", split="test")[0:n]
    x32 = images.float()
    source = labels.long()
    target = (source + 1 + torch.arange(n) % 9) % 10
    recon_rows, edit_rows, panels = [], [], {}
    for steps in steps_list:
        sigmas = grid(steps)
        for label, method, options, w in METHODS:
            errors, seconds = {}, {}
            for dtype in (torch.float32, torch.float64):
                k = n if dtype == torch.float32 else min(n, n64)  # float64 is ~5x slower on CPU
                model.network.to(dtype)
                den = embedding_denoiser(model.denoiser, model.network)
                null = {"class_embedding": null_embedding(model.network, k)}
                res = run_method(
                    Counter(den),
                    x32[:k].to(dtype),
                    sigmas,
                    method,
                    options,
                    w,
                    source[:k],
                    target[:k],
                    null,
                )
                errors[dtype], seconds[dtype] = relative(res["recon"], x32[:k]), res["seconds"]
                if dtype == torch.float32:
                    res32 = res
            nfe = res32["nfe"]
            recon_rows.append(
                [
                    label,
                    steps,
                    nfe[0],
                    nfe[1],
                    nfe[2],
                    errors[torch.float32],
                    errors[torch.float64],
                    rms(res32["recon"], x32),
                    round(seconds[torch.float32], 1),
                ]
            )
            edited = res32["edited"].clamp(-1, 1)
            edit_rows.append(
                [
                    label,
                    steps,
                    class_accuracy(edited, target),
                    class_accuracy(res32["recon"].clamp(-1, 1), source),
                    rms(edited, x32),
                ]
            )
            if steps == steps_list[0]:
                panels[label] = (res32["recon"], edited)
        model.network.to(torch.float32)
        for strength in strengths:
            tail = schedules.get("karras")(steps, SIGMA_MIN, SIGMA_MAX)[
                -1 - round(strength * steps) :
            ]
            counter = Counter(model.denoiser)
            gens = difflab.sampling.generators(0, n)
            edited = inversion.sdedit(
                counter, x32, tail, cond={"labels": target}, guidance=GUIDED, generator=gens
            )
            label = f"sdedit {strength:g} w=2"
            edit_rows.append(
                [label, steps, class_accuracy(edited.clamp(-1, 1), target), "-", rms(edited, x32)]
            )
            if steps == steps_list[0]:
                panels[label] = (None, edited.clamp(-1, 1))
    table(
        f"MNIST: reconstruction error against NFE ({n} test images, the first {min(n, n64)} in "
        "float64; inverted under their label)",
        [
            "method",
            "steps",
            "NFE invert",
            "NFE sample",
            "backward",
            "error f32",
            "error f64",
            "RMS f32",
            "CPU s f32",
        ],
        recon_rows,
    )
    table(
        "MNIST: class edits (float32; shipped classifier)",
        ["method", "steps", "edit accuracy", "reconstruction accuracy", "RMS to source"],
        edit_rows,
    )
    write_grid(out, x32, target, panels)


def write_grid(out: str, x: torch.Tensor, target: torch.Tensor, panels: dict[str, Any]) -> None:
    """Rows: the inputs, then per method its reconstructions and its edits (8 images)."""
    k = min(8, len(x))
    rows, titles = [x[:k]], ["input"]
    for label, (recon, edited) in panels.items():
        if recon is not None:
            rows.append(recon[:k].clamp(-1, 1))
            titles.append(f"{label}: reconstruction")
        rows.append(edited[:k])
        titles.append(f"{label}: edit")
    images = to_uint8(torch.cat(rows)).numpy()
    grid_image = image_grid(images, nrow=k, scale=2)
    # titles to the right of the tiles (image_grid's left titles are made for short labels)
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=12)
    canvas = Image.new("RGB", (grid_image.width + 260, grid_image.height), "white")
    canvas.paste(grid_image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    tile = (grid_image.height - 2) / len(rows)
    for r, title in enumerate(titles):
        draw.text(
            (grid_image.width + 6, int(r * tile + tile / 2 - 7)), title, fill="black", font=font
        )
    targets = ", ".join(str(int(t)) for t in target[:k])
    draw.text((grid_image.width + 6, 2), f"targets: {targets}", fill=(90, 90, 90), font=font)
    save_png(canvas, out)
    print(
        f"\nwrote {out} (targets of the 8 columns: {targets}; {np.asarray(canvas).shape[1]} px wide)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="32 MNIST images (8 in float64), 10 steps")
    p.add_argument("--n", type=int, default=64, help="MNIST test images")
    p.add_argument("--n64", type=int, default=64, help="of which in float64 (the first ones)")
    p.add_argument("--mixture-n", type=int, default=64, help="mixture samples")
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20], help="mixture grids")
    p.add_argument("--mnist-steps", type=int, nargs="+", default=[10, 20])
    p.add_argument("--strengths", type=float, nargs="*", default=[0.5, 0.7], help="SDEdit")
    p.add_argument("--methods", nargs="+", help="only these rows (names as in the tables)")
    p.add_argument("--skip-mnist", action="store_true")
    p.add_argument("--skip-mixture", action="store_true")
    p.add_argument(
        "--out", default="inversion.png", help="PNG of MNIST inputs, reconstructions, edits"
    )
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.quick:
        args.n, args.n64, args.mnist_steps = 32, 8, [10]
    if args.methods:
        unknown = set(args.methods) - {row[0] for row in METHODS}
        if unknown:
            p.error(f"unknown rows {sorted(unknown)}; rows: {[row[0] for row in METHODS]}")
        METHODS[:] = [row for row in METHODS if row[0] in args.methods]
    torch.set_num_threads(args.threads)
    begin = time.perf_counter()
    if not args.skip_mixture:
        mixture_section(args.steps, args.mixture_n)
    if not args.skip_mnist:
        mnist_section(args.mnist_steps, args.n, args.n64, args.out, args.strengths)
    print(f"\n({time.perf_counter() - begin:.0f} s wall, {time.process_time():.0f} s CPU)")


if __name__ == "__main__":
    main()
