"""A noise-conditional MNIST classifier p(c | x, sigma) for classifier guidance, x = x0 + sigma eps
with x0 in [-1, 1] (the data scale of the shipped MNIST model).

Shipped in ``difflab/pretrained/mnist_noisy_classifier`` (model.safetensors + config.json);
``python -m difflab.guidance.train_noisy_classifier`` retrains it on the MNIST training split and records
its test-split accuracy at several noise levels in the config. It imports the network embeddings of
difflab.models (layer 3): the network lives here, beside the guidance it serves.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from difflab.core.tensors import as_tensor
from difflab.models.embeddings import TimeEmbedding
from difflab.utils.weights import (
    load_state_dict_strict,
    load_weights,
    read_config,
    save_weights,
    write_config,
)

__all__ = ["WEIGHTS_DIR", "NoisyClassifier", "accuracy", "load", "save", "shipped", "train"]

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "pretrained" / "mnist_noisy_classifier"
TRAIN_COMMAND = "python -m difflab.guidance.train_noisy_classifier"
SIGMA_RANGE = (0.002, 80.0)  # the shipped MNIST model's process
REPORT_SIGMAS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0)


class _Block(nn.Module):
    """3x3 conv, group norm, FiLM by the noise embedding (h (1 + a) + b), SiLU, 2x2 average pool."""

    def __init__(self, cin: int, cout: int, emb: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.GroupNorm(8, cout)
        self.film = nn.Linear(emb, 2 * cout)
        self.pool = nn.AvgPool2d(2)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        a, b = self.film(emb)[:, :, None, None].chunk(2, 1)
        return self.pool(nn.functional.silu(self.norm(self.conv(h)) * (1 + a) + b))


class NoisyClassifier(nn.Module):
    """logits(x, sigma) [B, classes]: input c_in x, c_in = 1/sqrt(sigma^2 + sigma_data^2) (Karras et
    al. 2022; x itself at sigma = inf, where it holds the unit noise), noise level log(sigma)/4 as
    Fourier features and FiLM in every conv block, then a linear classifier of the flattened map.
    Noise levels outside the training range SIGMA_RANGE are embedded as its nearer end."""

    def __init__(
        self,
        channels: tuple[int, ...] = (16, 32, 64),
        classes: int = 10,
        image_size: int = 28,
        in_channels: int = 1,
        embedding: int = 64,
        sigma_data: float = 0.5,
    ) -> None:
        super().__init__()
        self.config = {
            "channels": list(channels),
            "classes": classes,
            "image_size": image_size,
            "in_channels": in_channels,
            "embedding": embedding,
            "sigma_data": sigma_data,
        }
        self.sigma_data = sigma_data
        self.embed = TimeEmbedding(embedding, "fourier", fourier_scale=1.0)
        widths = [in_channels, *channels]
        self.blocks = nn.ModuleList(_Block(a, b, embedding) for a, b in itertools.pairwise(widths))
        size = image_size
        for _ in channels:
            size //= 2
        self.head = nn.Linear(channels[-1] * size * size, classes)

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        s = as_tensor(sigma).to(device=x.device, dtype=x.dtype).expand(x.shape[0])
        scale = torch.rsqrt(s.square() + self.sigma_data**2)[:, None, None, None]
        h = torch.where(torch.isinf(s)[:, None, None, None], x, scale * x)
        emb = self.embed(s.clamp(*SIGMA_RANGE).log() / 4)  # the trained range
        for block in self.blocks:
            h = block(h, emb)
        return self.head(h.flatten(1))


def save(model: NoisyClassifier, folder: str | Path, info: dict) -> None:
    """model.safetensors and config.json (architecture, ``info``), each written atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder / "model.safetensors", model.state_dict())
    write_config(
        folder / "config.json", {"architecture": "NoisyClassifier", **model.config, **info}
    )


def load(folder: str | Path | None = None) -> NoisyClassifier:
    """The classifier in eval mode from ``folder`` (default: the shipped weights), without grads."""
    folder = WEIGHTS_DIR if folder is None else Path(folder)
    config = read_config(folder / "config.json")
    if config.get("architecture") != "NoisyClassifier":
        raise ValueError(
            f"{folder / 'config.json'} names architecture {config.get('architecture')!r}, "
            "expected 'NoisyClassifier'"
        )
    keys = ("classes", "image_size", "in_channels", "embedding", "sigma_data")
    model = NoisyClassifier(tuple(config["channels"]), **{k: config[k] for k in keys})
    weights = load_weights(folder / "model.safetensors")
    load_state_dict_strict(model, weights, str(folder / "model.safetensors"))
    return model.eval().requires_grad_(False)


@functools.cache
def shipped() -> NoisyClassifier:
    """The shipped MNIST noise-conditional classifier (loaded once)."""
    return load()


def _log_uniform(n: int, generator: torch.Generator) -> Tensor:
    lo, hi = (math.log(v) for v in SIGMA_RANGE)
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
    """Cross-entropy on x = x0 + sigma eps, log sigma uniform on SIGMA_RANGE, MNIST training split;
    AdamW with a one-cycle learning rate. Returns the model and its record (test accuracy per sigma)."""
    from difflab import data  # layer 3, needed only to train

    start, cpu_start = time.perf_counter(), time.process_time()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    trainset, testset = data.load("mnist", "train"), data.load("mnist", "test")
    model = NoisyClassifier(channels)
    steps = epochs * math.ceil(len(trainset.x) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(trainset.x), generator=g)
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            sigma = _log_uniform(len(idx), g)
            x = trainset.x[idx] + sigma[:, None, None, None] * torch.randn(
                trainset.x[idx].shape, generator=g
            )
            loss = nn.functional.cross_entropy(model(x, sigma), trainset.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(
            f"epoch {epoch + 1}/{epochs}: train loss {total / len(order):.4f}, "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )
    model.eval()
    acc = {f"{s:g}": accuracy(model, testset.x, testset.labels, s, seed) for s in REPORT_SIGMAS}
    info = {
        "test_accuracy": acc,
        "train_seconds": round(time.perf_counter() - start, 1),
        "train_cpu_seconds": round(time.process_time() - cpu_start, 1),
        "training": {
            "command": TRAIN_COMMAND,
            "data": "MNIST training split (60000 images); accuracy on the test split (10000) "
            "at each noise level sigma (x = x0 + sigma eps, x0 in [-1, 1])",
            "noise_levels": f"log sigma uniform on [log {SIGMA_RANGE[0]}, log {SIGMA_RANGE[1]}]",
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "threads": torch.get_num_threads(),
        },
    }
    return model, info
