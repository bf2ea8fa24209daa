"""Retrain the shipped noise-conditional MNIST classifier (classifier guidance):
``python -m difflab.training.noisy_classifier [--out DIR]`` (MNIST training split; the test-split
accuracy at several noise levels goes into the config).

The network is :class:`difflab.models.classifiers.NoisyClassifier`; the shipped one loads with
``difflab.pretrained.load_classifier("mnist_noisy_classifier")``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from difflab.models.classifiers import NOISY_SIGMA_RANGE, NoisyClassifier, save_classifier
from difflab.training.classifiers import fit_classifier

__all__ = ["SHIPPED_FOLDER", "TRAIN_COMMAND", "accuracy", "main", "train"]

# the default --out: the shipped folder in this checkout
SHIPPED_FOLDER = Path(__file__).resolve().parent.parent / "pretrained" / "mnist_noisy_classifier"
TRAIN_COMMAND = "python -m difflab.training.noisy_classifier"
REPORT_SIGMAS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0)


def _log_uniform(n: int, generator: torch.Generator) -> Tensor:
    lo, hi = (math.log(v) for v in NOISY_SIGMA_RANGE)
    return torch.exp(lo + (hi - lo) * torch.rand(n, generator=generator))


@torch.no_grad()
def accuracy(model: NoisyClassifier, x0: Tensor, labels: Tensor, sigma: float, seed: int) -> float:
    """Accuracy on x0 + sigma eps (eps seeded), in batches of 1000."""
    g = torch.Generator().manual_seed(seed)
    right = 0
    for i in range(0, len(x0), 1000):
        x = x0[i : i + 1000]
        x = x + sigma * torch.randn(x.shape, generator=g)
        right += int((model(x, sigma).argmax(1) == labels[i : i + 1000]).sum())
    return right / len(x0)


def train(
    channels: tuple[int, ...] = (16, 32, 64),
    epochs: int = 8,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
) -> tuple[NoisyClassifier, dict]:
    """Cross-entropy on x = x0 + sigma eps, log sigma uniform on NOISY_SIGMA_RANGE, MNIST training
    split (:func:`~difflab.training.classifiers.fit_classifier`). Returns the model and its record
    (test accuracy per sigma)."""
    from difflab import data

    start, cpu_start = time.perf_counter(), time.process_time()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    trainset, testset = data.load("mnist", "train"), data.load("mnist", "test")
    model = NoisyClassifier(channels)

    def noisy_logits(net: nn.Module, x0: Tensor, generator: torch.Generator) -> Tensor:
        sigma = _log_uniform(len(x0), generator)
        return net(
            x0 + sigma[:, None, None, None] * torch.randn(x0.shape, generator=generator), sigma
        )

    def report(epoch: int, loss: float) -> None:
        print(
            f"epoch {epoch + 1}/{epochs}: train loss {loss:.4f}, "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )

    fit_classifier(
        model, trainset.x, trainset.labels, noisy_logits, epochs=epochs, batch_size=batch_size,
        lr=lr, weight_decay=1e-4, generator=g, on_epoch=report,
    )  # fmt: skip
    acc = {f"{s:g}": accuracy(model, testset.x, testset.labels, s, seed) for s in REPORT_SIGMAS}
    lo, hi = NOISY_SIGMA_RANGE
    info = {
        "test_accuracy": acc,
        "train_seconds": round(time.perf_counter() - start, 1),
        "train_cpu_seconds": round(time.process_time() - cpu_start, 1),
        "training": {
            "command": TRAIN_COMMAND,
            "data": "MNIST training split (60000 images); accuracy on the test split (10000) "
            "at each noise level sigma (x = x0 + sigma eps, x0 in [-1, 1])",
            "noise_levels": f"log sigma uniform on [log {lo}, log {hi}]",
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "threads": torch.get_num_threads(),
        },
    }
    return model, info


def main(argv: list[str] | None = None) -> None:
    """Train with :func:`train` and save to ``--out`` (default: the shipped folder)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].rstrip(":"))
    parser.add_argument("--out", type=Path, default=SHIPPED_FOLDER, help="output folder")
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, info = train(tuple(args.channels), epochs=args.epochs, seed=args.seed)
    save_classifier(args.out, model, info)
    print(
        f"test accuracy by sigma {info['test_accuracy']} in {info['train_seconds']} s -> {args.out}"
    )


if __name__ == "__main__":
    main()
