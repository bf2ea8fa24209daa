"""Conditioning embeddings shared by every network: the noise-level (time) input and class labels
(the context and given entries: :mod:`difflab.models.context`).

A class label -1 (or ``labels=None``) is the null class of classifier-free guidance (Ho & Salimans
2022): it has its own learned row, so one network is both the conditional and the unconditional model.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from difflab.core.tensors import _check, check_name

__all__ = [
    "TIME_EMBEDDINGS",
    "ClassEmbedding",
    "TimeEmbedding",
    "batch_time",
    "class_index",
    "conditioning",
    "context_term",
    "fourier_features",
    "positional",
]

TIME_EMBEDDINGS = ("positional", "fourier")


def positional(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """[cos(t w_k), sin(t w_k)], w_k = max_period^(-k / (dim/2)) (Vaswani et al. 2017; Ho et al. 2020).

    Made for time inputs on the scale of [0, 1000] (the DDPM timestep).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    angles = t.float()[..., None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def fourier_features(t: Tensor, weight: Tensor) -> Tensor:
    """[cos(2 pi t w_k), sin(2 pi t w_k)] with w_k ~ N(0, scale^2) fixed (Tancik et al. 2020; Song et al. 2021).

    Made for time inputs of unit scale (t in [0, 1], log(sigma) / 4).
    """
    angles = 2 * math.pi * t.float()[..., None] * weight
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def batch_time(time: Tensor, x: Tensor, per_token: bool = False) -> Tensor:
    """The time input as one value per sample [B] (a scalar is shared by the batch) or, for a
    network that takes one (``per_token``), one value per token [B, T] of a sequence x [B, T, D].
    A network without per-token time takes [B, T] whose tokens all share the value as [B]."""
    time = torch.as_tensor(time, device=x.device)
    if time.ndim == 0:
        return time.expand(x.shape[0])
    if time.ndim == 2 and x.ndim >= 2 and time.shape == x.shape[:2]:
        if per_token:
            return time
        _check(
            time == time[:, :1],
            f"this network takes one time per sample [{x.shape[0]}]; got one per token of shape "
            f"{tuple(time.shape)} that differ within a sample (use a sequence network)",
        )
        return time[:, 0]
    if time.shape != (x.shape[0],):
        tokens = f" or one per token ({x.shape[0]}, {x.shape[1]})" if per_token else ""
        raise ValueError(
            f"time must be a scalar or one value per sample of shape ({x.shape[0]},){tokens}, "
            f"got shape {tuple(time.shape)}"
        )
    return time


class TimeEmbedding(nn.Module):
    """e(t) = W2 SiLU(W1 phi(t)), phi positional or Gaussian Fourier features (Ho et al. 2020; Song et al. 2021)."""

    def __init__(
        self, dim: int, kind: str = "positional", features: int = 0, fourier_scale: float = 16.0
    ) -> None:
        super().__init__()
        check_name("time embedding", kind, TIME_EMBEDDINGS)
        self.kind, self.features = kind, features or dim
        if self.features % 2:
            raise ValueError(f"time embedding features must be even, got {self.features}")
        if kind == "fourier":
            self.register_buffer("weight", torch.randn(self.features // 2) * fourier_scale)
        self.mlp = nn.Sequential(nn.Linear(self.features, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        if self.kind == "fourier":
            phi = fourier_features(t, self.weight)
        else:
            phi = positional(t, self.features)
        return self.mlp(phi.to(self.mlp[0].weight.dtype))


def class_index(
    labels: Tensor | None, num_classes: int, batch: int, device: torch.device
) -> Tensor:
    """Validated labels as row indices: 0..num_classes-1 as given, -1 (and ``None``) the null row."""
    if labels is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    labels = torch.as_tensor(labels, device=device)
    if labels.shape != (batch,) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be integers of shape ({batch},), got {labels.dtype} of shape "
            f"{tuple(labels.shape)}"
        )
    ok = (labels >= -1) & (labels < num_classes)
    if num_classes == 0:
        message = "this network is unconditional (num_classes=0): labels must be -1 or None"
    else:
        message = f"labels must be in [0, {num_classes - 1}] or -1 (null class)"
    if ok.device.type != "cpu":  # no host-device synchronisation on an accelerator
        torch._assert_async(ok.all(), message)
    elif not bool(ok.all()):
        raise ValueError(message)
    return torch.where(labels < 0, num_classes, labels)


def conditioning(
    time_embed: nn.Module,
    class_embed: nn.Module | None,
    time: Tensor,
    labels: Tensor | None,
    x: Tensor,
    context_embed: nn.Module | None = None,
    context: Tensor | None = None,
) -> Tensor:
    """e = e_t(t) + e_y(y) + e_c(c): the time embedding plus the class embedding plus the context
    embedding (:class:`difflab.models.context.ContextEmbedding`) when the network takes a context
    (labels are still checked, and must be -1 or None, on an unconditional network)."""
    emb = time_embed(batch_time(time, x))
    if class_embed is None:
        class_index(labels, 0, x.shape[0], x.device)
    else:
        emb = emb + class_embed(labels, x.shape[0], x.device)
    e_c = context_term(context_embed, context, x.shape[0])
    return emb if e_c is None else emb + e_c


def context_term(embed: nn.Module | None, context: Tensor | None, batch: int) -> Tensor | None:
    """The context embedding e_c [B, width], or None for a network without a context (which
    refuses one)."""
    if embed is None:
        if context is not None:
            raise ValueError("this network takes no context (build it with context_dim > 0)")
        return None
    return embed(context, batch)


class ClassEmbedding(nn.Module):
    """e(y) = E[y] for y in 0..num_classes-1, and a learned null row E[num_classes] for y = -1
    (classifier-free guidance, Ho & Salimans 2022)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: Tensor | None, batch: int, device: torch.device) -> Tensor:
        return self.table(class_index(labels, self.num_classes, batch, device))
