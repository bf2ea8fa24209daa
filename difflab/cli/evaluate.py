"""`difflab eval` (the quality of saved samples against a reference split) and `difflab bench-nfe`
(samplers compared at equal numbers of denoiser evaluations: a table and a PNG plot)."""

from __future__ import annotations

import argparse
from typing import Any

from difflab.cli.common import CliError, check_output, positive, user_errors

__all__ = ["add"]

BENCH_SAMPLERS = ("euler", "heun", "dpmpp_2m", "unipc")
REFERENCE_HELP = (
    "a data set split written name-split (mnist-test, mnist-train, moons-test, ...; a bare name "
    "means its test split), a .npz / .npy file or a folder of images"
)


def add(commands: Any) -> None:
    e = commands.add_parser(
        "eval",
        help="score saved samples against a reference data split",
        description="Score samples saved by `difflab sample --out x.npz` against a reference. "
        "MNIST images: Fréchet distance, precision/recall, density/coverage and MMD in the shipped "
        "MNIST classifier's features, and the class accuracy of labelled samples; optionally the "
        "Inception FID. Vectors (2-D toys): Fréchet distance, sliced W2 and MMD.",
        epilog="Example: difflab eval --samples x.npz --reference mnist-test --out metrics.json",
    )
    e.add_argument("--samples", required=True, help=".npz from `difflab sample` (or a .npy array)")
    e.add_argument(
        "--reference", default="mnist-test", help=f"{REFERENCE_HELP} (default: mnist-test)"
    )
    e.add_argument("--n", type=int, default=10_000, help="reference samples used (default: 10000)")
    e.add_argument(
        "--inception",
        action="store_true",
        help="also the Inception FID (needs pip install 'difflab[fid]'; about 0.5 s per image on "
        "one CPU core)",
    )
    e.add_argument("--seed", type=int, default=0, help="seed of the sliced-W2 projections")
    e.add_argument("--out", default=None, help="also write the metrics to this JSON file")
    e.set_defaults(run=run_eval)

    b = commands.add_parser(
        "bench-nfe",
        help="compare samplers at equal NFE: a table and a plot of Fréchet distance against NFE",
        description="Sample a saved model with each sampler at each NFE budget (denoiser "
        "evaluations per sample), running the step count that spends exactly that many; budgets a "
        "sampler cannot meet (an even NFE for Heun) are left out. Every run starts from the same "
        "seeded noise. Prints a table and writes a PNG of the Fréchet distance to the reference "
        "against NFE (MNIST classifier features for images, raw vectors for 2-D toys).",
        epilog="Example: difflab bench-nfe --model mnist --samplers euler heun dpmpp_2m --nfe 5 10 "
        "20 --n 500 --out nfe.png",
    )
    b.add_argument("--model", required=True, help="a model name (`difflab models`) or folder")
    b.add_argument(
        "--samplers",
        nargs="+",
        default=list(BENCH_SAMPLERS),
        help=f"sampler names (see `difflab samplers`; default: {' '.join(BENCH_SAMPLERS)})",
    )
    b.add_argument(
        "--nfe", nargs="+", type=int, default=[5, 10, 20], help="NFE budgets (default: 5 10 20)"
    )
    b.add_argument("--n", type=int, default=500, help="samples per run (default: 500)")
    b.add_argument(
        "--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = none)"
    )
    b.add_argument("--seed", type=int, default=0, help="seed of the starting noise")
    b.add_argument(
        "--reference",
        default=None,
        help=f"{REFERENCE_HELP} (default: the test split of the model's training data)",
    )
    b.add_argument(
        "--reference-n", type=int, default=10_000, help="reference samples used (default: 10000)"
    )
    b.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    b.add_argument("--out", default="nfe.png", help="the plot (PNG; default: nfe.png)")
    b.set_defaults(run=run_bench)


def run_eval(args: argparse.Namespace) -> None:
    import json

    from difflab.metrics import evaluate_samples, read_samples
    from difflab.utils.files import atomic_write_bytes

    positive(args.n, "--n", minimum=2)
    positive(args.seed, "--seed", minimum=0)
    out = None if args.out is None else check_output(args.out, (".json",))
    with user_errors():
        samples, labels = read_samples(args.samples)
        try:
            metrics = evaluate_samples(
                samples, labels, args.reference, args.n, inception=args.inception, seed=args.seed
            )
        except ImportError as e:
            raise CliError(str(e)) from None
    print(f"{len(samples)} samples from {args.samples} against {args.reference}:")
    width = max(map(len, metrics))
    for name, value in metrics.items():
        print(f"  {name:<{width}}  {value:.6g}")
    if out is not None:
        record = {
            "samples": str(args.samples),
            "count": len(samples),
            "reference": str(args.reference),
            "reference_n": args.n,
            "metrics": metrics,
        }
        atomic_write_bytes(out, (json.dumps(record, indent=2) + "\n").encode())
        print(f"wrote {out}")


def run_bench(args: argparse.Namespace) -> None:
    import torch

    from difflab import pretrained
    from difflab.metrics import bench_nfe, format_table, plot_nfe

    positive(args.n, "--n", minimum=2)
    positive(args.reference_n, "--reference-n", minimum=2)
    positive(args.seed, "--seed", minimum=0)
    for budget in args.nfe:
        positive(budget, "--nfe")
    out = check_output(args.out, (".png",))
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise CliError(f"unknown --device {args.device!r}: give e.g. cpu, cuda or cuda:1") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {args.device}: this torch build or machine has no CUDA device")
    with user_errors():
        model = pretrained.load(args.model, device)
        rows = bench_nfe(
            model,
            args.samplers,
            args.nfe,
            args.n,
            args.guidance,
            args.seed,
            reference=args.reference,
            reference_n=args.reference_n,
        )
    if not rows:
        raise CliError(
            f"none of the samplers {', '.join(args.samplers)} can spend exactly "
            f"{', '.join(map(str, args.nfe))} NFE; try other --nfe budgets"
        )
    print(format_table(rows))
    plot_nfe(rows, out, title=f"{model.name}: {args.n} samples, guidance {args.guidance:g}")
    print(f"wrote {out}")
