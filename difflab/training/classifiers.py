"""Training a classifier network: cross-entropy over minibatches in a fresh random order each epoch,
AdamW with a one-cycle learning rate (Smith & Topin 2019). The MNIST feature classifier
(:func:`difflab.metrics.classifier.train_classifier`) and the noise-conditional one
(:mod:`difflab.training.noisy_classifier`) differ only in what the network sees of a batch."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["fit_classifier"]


def fit_classifier(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    logits: Callable[[nn.Module, Tensor, torch.Generator], Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    generator: torch.Generator,
    on_epoch: Callable[[int, float], None] | None = None,
) -> None:
    """Minimize the mean of -log softmax(logits(model, x_batch, generator))[label] over ``x``
    in place; ``generator`` draws each epoch's order and whatever ``logits`` draws (noise,
    shifts). After each epoch the model is put in eval mode and ``on_epoch(epoch, mean loss)``
    is called."""
    steps = epochs * math.ceil(len(x) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            loss = nn.functional.cross_entropy(logits(model, x[idx], generator), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        model.eval()
        if on_epoch is not None:
            on_epoch(epoch, total / len(order))
