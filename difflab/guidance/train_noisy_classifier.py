"""Retrain the shipped noise-conditional MNIST classifier:
``python -m difflab.guidance.train_noisy_classifier [--out DIR]`` (MNIST training split; the test-split
accuracy at several noise levels goes into the config)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from difflab.guidance.noisy_classifier import WEIGHTS_DIR, save, train


def main(argv: list[str] | None = None) -> None:
    """Train with :func:`train` and save to ``--out`` (default: the shipped folder)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].rstrip(":"))
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output folder")
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, info = train(tuple(args.channels), epochs=args.epochs, seed=args.seed)
    save(model, args.out, info)
    print(
        f"test accuracy by sigma {info['test_accuracy']} in {info['train_seconds']} s -> {args.out}"
    )


if __name__ == "__main__":
    main()
