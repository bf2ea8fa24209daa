"""`difflab text sample` and `difflab text train`: masked diffusion language models."""

from __future__ import annotations

import argparse
import re
from typing import Any

from difflab.cli.common import (
    CliError,
    add_run_arguments,
    check_output,
    lookup,
    positive,
    run_training,
    user_errors,
)

__all__ = ["add", "escape", "unescape"]

DTYPES = ("float64", "float32")


def add(commands: Any) -> None:
    t = commands.add_parser(
        "text",
        help="masked diffusion language models: sample, train",
        description="Masked (absorbing-state) diffusion language models (MDLM): sample a shipped or "
        "trained model with the ancestral, first-hitting, confidence (MaskGIT) or semi-"
        "autoregressive sampler, or train one from a config. See docs/text.md.",
        epilog="Example: difflab text sample --model shakespeare --sampler first_hitting "
        "--steps 64 --n 8 --length 256 --seed 0 --out samples.txt",
    )
    sub = t.add_subparsers(dest="text_command", required=True, metavar="COMMAND")
    s = sub.add_parser(
        "sample",
        help="generate text",
        description="Generate n samples, one per line (line breaks inside a sample written as \\n, "
        "backslashes as \\\\), to --out or the terminal. Sample i depends only on (seed, i).",
        epilog="Example: difflab text sample --model shakespeare --sampler first_hitting "
        "--steps 64 --n 8 --length 256 --seed 0 --out samples.txt",
    )
    s.add_argument("--model", default="shakespeare", help="a shipped text model or a model folder")
    s.add_argument(
        "--sampler",
        default=None,
        help="ancestral, first_hitting, confidence or semi_ar (default: the model's)",
    )
    s.add_argument("--steps", type=int, default=None, help="sampling steps (default: --length)")
    s.add_argument("--n", type=int, default=1, help="number of samples (default 1)")
    s.add_argument("--length", type=int, default=None, help="tokens per sample (default: context)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--temperature", type=float, default=1.0, help="token temperature (default 1)")
    s.add_argument("--schedule", default=None, help="masking schedule: linear, cosine, log_linear")
    s.add_argument("--prompt", default=None, help="text the samples start with")
    s.add_argument("--block", type=int, default=None, help="semi_ar: tokens per block (32)")
    s.add_argument("--inner", default=None, help="semi_ar: the sampler within a block")
    s.add_argument(
        "--dtype",
        default="float64",
        help="precision of categorical sampling: float64 (default) or float32 (biased, for study)",
    )
    s.add_argument("--batch-size", type=int, default=64, help="samples per network batch (64)")
    s.add_argument("--out", default=None, help="a .txt file (default: print)")
    s.set_defaults(run=run_sample)

    tr = sub.add_parser(
        "train",
        help="train a masked diffusion or autoregressive text model",
        description="Train from a TOML config with section.key=value overrides. The run folder "
        "(run.out/run.name) gets config.json, checkpoints/ (a rerun resumes the latest one), "
        "metrics.jsonl and, at the end, model/ (EMA weights, loadable by --model).",
        epilog="Example: difflab text train --config configs/text_shakespeare.toml run.steps=100",
    )
    add_run_arguments(tr)
    tr.set_defaults(run=run_train)


def escape(text: str) -> str:
    """One line: backslashes as \\\\, line breaks as \\n, carriage returns as \\r."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def unescape(line: str) -> str:
    """The text of a line written by :func:`escape`."""
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), line)


def run_sample(args: argparse.Namespace) -> None:
    positive(args.n, "--n")
    positive(args.steps, "--steps")
    positive(args.length, "--length")
    positive(args.batch_size, "--batch-size")
    positive(args.block, "--block")
    if args.seed < 0:
        raise CliError(f"--seed must be >= 0, got {args.seed}")
    if args.dtype not in DTYPES:
        raise CliError(f"--dtype must be float64 or float32, got {args.dtype!r}")
    out = check_output(args.out, (".txt",)) if args.out else None

    import torch

    from difflab.text import load, samplers

    model = lookup(load, args.model)
    sampler = args.sampler or model.config.get("sample", {}).get("sampler", "first_hitting")
    lookup(samplers.get, sampler)
    if (args.block or args.inner) and sampler != "semi_ar":
        raise CliError("--block and --inner apply to --sampler semi_ar only")
    if args.inner is not None:
        if args.inner == "semi_ar":
            raise CliError("--inner cannot be semi_ar")
        lookup(samplers.get, args.inner)
    options: dict[str, Any] = {"temperature": args.temperature, "dtype": getattr(torch, args.dtype)}
    if args.schedule is not None:
        options["schedule"] = args.schedule
    options |= {k: v for k, v in (("block", args.block), ("inner", args.inner)) if v is not None}
    with user_errors():
        result = model.generate(
            args.n,
            args.length,
            sampler=sampler,
            steps=args.steps,
            seed=args.seed,
            batch_size=args.batch_size,
            prompt=args.prompt,
            **options,
        )
    lines = result.texts or [" ".join(map(str, row.tolist())) for row in result.tokens]
    text = "".join(escape(line) + "\n" for line in lines)
    if out is None:
        print(text, end="")
        return
    from difflab.utils.files import atomic_write_bytes

    atomic_write_bytes(out, text.encode("utf-8"))
    print(f"wrote {args.n} samples to {out} ({result.seconds:.1f} s)")


def run_train(args: argparse.Namespace) -> None:
    from difflab.text.train import train

    run_training(args, train)
