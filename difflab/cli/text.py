"""`difflab text sample` and `difflab text train`: masked and uniform-state diffusion language
models."""

from __future__ import annotations

import argparse
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

__all__ = ["add"]

DTYPES = ("float64", "float32")
# sampler options of the command line: (flag, the sampler keyword it sets)
OPTIONS = (
    ("--schedule", "schedule"),
    ("--block", "block"),
    ("--inner", "inner"),
    ("--threshold", "threshold"),
    ("--remasking", "remasking"),
    ("--eta", "eta"),
)


def add(commands: Any) -> None:
    t = commands.add_parser(
        "text",
        help="diffusion language models: sample, train",
        description="Masked (absorbing-state, MDLM) and uniform-state (D3PM-uniform) diffusion "
        "language models: sample a shipped or trained model with the ancestral, first-hitting, "
        "confidence (MaskGIT / LLaDA), threshold (Fast-dLLM), ReMDM or semi-autoregressive "
        "sampler, continue a prompt with or without classifier-free guidance, or train one from a "
        "config. See docs/text.md.",
        epilog="Example: difflab text sample --model shakespeare --sampler first_hitting "
        "--steps 64 --n 8 --length 256 --seed 0 --out samples.txt",
    )
    sub = t.add_subparsers(dest="text_command", required=True, metavar="COMMAND")
    s = sub.add_parser(
        "sample",
        help="generate text",
        description="Generate n samples to the terminal or --out: a .txt file (each sample after "
        "a line '=== sample i (seed s) ===', with its real line breaks) or a .jsonl file (one "
        "JSON object per sample: index, seed, sampler, steps, tokens, prompt, text). Sample i "
        "depends only on (seed, i).",
        epilog="Examples: difflab text sample --model shakespeare --sampler threshold "
        "--threshold 0.9 --n 8 --out samples.txt; difflab text sample --prompt 'ROMEO:' "
        "--guidance 2 --sampler semi_ar --block 32 --inner confidence --schedule linear",
    )
    s.add_argument("--model", default="shakespeare", help="a shipped text model or a model folder")
    s.add_argument(
        "--sampler",
        default=None,
        help="ancestral, first_hitting, confidence, threshold, remdm, semi_ar (masked models) or "
        "uniform_ancestral (uniform ones); default: the model's",
    )
    s.add_argument("--steps", type=int, default=None, help="sampling steps (default: --length)")
    s.add_argument("--n", type=int, default=1, help="number of samples (default 1)")
    s.add_argument("--length", type=int, default=None, help="tokens per sample (default: context)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--temperature", type=float, default=1.0, help="token temperature (default 1)")
    s.add_argument("--schedule", default=None, help="schedule: linear, cosine, log_linear")
    s.add_argument("--prompt", default=None, help="text the samples start with (kept as given)")
    s.add_argument(
        "--guidance",
        type=float,
        default=1.0,
        help="classifier-free guidance weight by the prompt (1: none; masked models)",
    )
    s.add_argument("--block", type=int, default=None, help="semi_ar: tokens per block (32)")
    s.add_argument("--inner", default=None, help="semi_ar: the sampler within a block")
    s.add_argument(
        "--threshold", type=float, default=None, help="threshold: confidence to unmask (0.9)"
    )
    s.add_argument(
        "--remasking",
        default=None,
        help="confidence, threshold: low_confidence or random; remdm: cap, rescale, conf or loop",
    )
    s.add_argument("--eta", type=float, default=None, help="remdm: remasking strength eta")
    s.add_argument(
        "--dtype",
        default="float64",
        help="precision of categorical sampling: float64 (default) or float32 (biased, for study)",
    )
    s.add_argument("--batch-size", type=int, default=64, help="samples per network batch (64)")
    s.add_argument("--out", default=None, help="a .txt or .jsonl file (default: print)")
    s.set_defaults(run=run_sample)

    tr = sub.add_parser(
        "train",
        help="train a masked, uniform-state or autoregressive text model",
        description="Train from a TOML config with section.key=value overrides (model.kind: "
        "masked, uniform or autoregressive). The run folder (run.out/run.name) gets config.json, "
        "checkpoints/ (a rerun resumes the latest one), metrics.jsonl and, at the end, model/ "
        "(EMA weights, loadable by --model).",
        epilog="Example: difflab text train --config configs/text_shakespeare.toml run.steps=100",
    )
    add_run_arguments(tr)
    tr.set_defaults(run=run_train)


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
    out = check_output(args.out, (".txt", ".jsonl")) if args.out else None

    import torch

    from difflab.text import load, samplers
    from difflab.text.model import DEFAULT_SAMPLER
    from difflab.text.sample_files import format_samples, write_samples

    model = lookup(load, args.model)
    sampler = args.sampler or model.config.get("sample", {}).get("sampler")
    sampler = sampler or DEFAULT_SAMPLER.get(model.kind, "first_hitting")
    lookup(samplers.get, sampler)
    target = (args.inner or "first_hitting") if sampler == "semi_ar" else sampler
    lookup(samplers.get, target)
    options: dict[str, Any] = {"temperature": args.temperature, "dtype": getattr(torch, args.dtype)}
    for flag, key in OPTIONS:
        value = getattr(args, key)
        if value is None:
            continue
        if key in ("block", "inner") and sampler != "semi_ar":
            raise CliError("--block and --inner apply to --sampler semi_ar only")
        if key not in ("block", "inner") and not samplers.accepts(target, key):
            raise CliError(f"{flag} does not apply to the {target} sampler")
        options[key] = value
    with user_errors():
        result = model.generate(
            args.n,
            args.length,
            sampler=sampler,
            steps=args.steps,
            seed=args.seed,
            batch_size=args.batch_size,
            prompt=args.prompt,
            guidance=args.guidance,
            **options,
        )
    texts = result.texts or [" ".join(map(str, row.tolist())) for row in result.tokens]
    if out is None:
        print(format_samples(texts, args.seed), end="")
        return
    steps = args.steps or result.tokens.shape[1]
    write_samples(
        out,
        texts,
        seed=args.seed,
        sampler=sampler,
        steps=steps,
        tokens=result.tokens.shape[1],
        prompt=args.prompt,
    )
    print(f"wrote {args.n} samples to {out} ({result.seconds:.1f} s)")


def run_train(args: argparse.Namespace) -> None:
    from difflab.text.train import train

    run_training(args, train)
