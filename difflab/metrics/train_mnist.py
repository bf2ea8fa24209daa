"""Retrain the shipped MNIST feature classifier: ``python -m difflab.metrics.train_mnist [--out DIR]``
(MNIST training split; the test-split accuracy goes into the config)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from difflab.metrics.classifier import WEIGHTS_DIR, save, train_classifier


def main(argv: list[str] | None = None) -> None:
    """Train with :func:`difflab.metrics.classifier.train_classifier` and save to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output folder")
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1 beat 2 for this small network)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, info = train_classifier(tuple(args.channels), epochs=args.epochs, seed=args.seed)
    save(model, args.out, info)
    print(f"test accuracy {info['test_accuracy']:.4f} in {info['train_seconds']} s -> {args.out}")


if __name__ == "__main__":
    main()
