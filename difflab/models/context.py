"""Conditioning inputs of every network besides the noise level and class labels: a context (a
vector or a sequence) and given entries (mask, given), the keys of :mod:`difflab.core.conditioning`.

Layouts. A sequence is [B, T, D]: batch, horizon (time steps, tokens), features; x of a sequence
network, a context sequence [B, Tc, Dc] (an observation history, a context window) and one time
input per token [B, T] all follow it. A context vector is [B, Dc].

A context enters a network in one of three ways: a vector (or a sequence, flattened, as Diffusion
Policy does with its observation horizon; Chi et al. 2023) modulates every block together with the
time embedding (FiLM, Perez et al. 2018; adaLN, Peebles & Xie 2023), or a sequence is attended to by
cross-attention (Vaswani et al. 2017; the transformer). The null context of classifier-free guidance
(``context=None``, or a sample's row of NaN: :func:`difflab.core.conditioning.null_like`) is a learned
context c_null of one sample's shape, initialized at zero, that training with context dropout fits.

Given entries: a network built with ``given_input`` sees [x, m g, m] stacked along its feature (or
channel) axis, m the 0/1 mask broadcast to x; without mask and given it sees m = 0 (nothing given).
The given entries of its estimate are replaced by their values in the denoiser
(:func:`difflab.core.conditioning.keep_given`), not here: a network predicts eps, v or x0, and only
its x0 estimate equals the given values there.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from difflab.core.conditioning import check_given, null_rows

__all__ = [
    "ContextEmbedding",
    "ContextInput",
    "context_embedding",
    "film",
    "given_channels",
]


class ContextInput(nn.Module):
    """A context c of one sample's shape (dim,) or (length, dim), validated, with the learned null
    context c_null where a sample's context is null: c' = c_null if c is all NaN (or None), else c
    (classifier-free guidance, Ho & Salimans 2022)."""

    def __init__(self, dim: int, length: int = 0) -> None:
        super().__init__()
        if dim < 1 or length < 0:
            raise ValueError(
                f"context_dim must be >= 1 and context_length >= 0, got {dim}, {length}"
            )
        self.shape = (length, dim) if length else (dim,)
        self.null = nn.Parameter(torch.zeros(self.shape))

    @property
    def flat_dim(self) -> int:
        """Elements of one sample's context (length * dim for a sequence)."""
        return self.null.numel()

    def forward(self, context: Tensor | None, batch: int) -> Tensor:
        null = self.null[None].expand(batch, *self.shape)
        if context is None:
            return null.clone()  # a copy: a view of the parameter misleads no-grad hooks
        context = torch.as_tensor(context, device=self.null.device)
        if context.shape != (batch, *self.shape) or not context.dtype.is_floating_point:
            want = ", ".join(map(str, (batch, *self.shape)))
            raise ValueError(
                f"context must be floats of shape [{want}], got {context.dtype} of shape "
                f"{list(context.shape)}"
            )
        rows = null_rows(context).reshape(-1, *([1] * len(self.shape)))
        return torch.where(rows, null, context.to(self.null.dtype))


class ContextEmbedding(nn.Module):
    """e_c = W2 SiLU(W1 vec(c')) of the (flattened) context c' of :class:`ContextInput`, to be added to
    the time embedding like a class embedding (Peebles & Xie 2023)."""

    def __init__(self, dim: int, length: int, width: int) -> None:
        super().__init__()
        self.input = ContextInput(dim, length)
        self.mlp = nn.Sequential(
            nn.Linear(self.input.flat_dim, width), nn.SiLU(), nn.Linear(width, width)
        )

    def forward(self, context: Tensor | None, batch: int) -> Tensor:
        c = self.input(context, batch).flatten(1)
        return self.mlp(c.to(self.mlp[0].weight.dtype))


def context_embedding(dim: int, length: int, width: int) -> ContextEmbedding | None:
    """The :class:`ContextEmbedding` of a network's ``context_dim`` and ``context_length``, None for
    a network without a context (context_dim 0)."""
    if dim == 0 and length == 0:
        return None
    if dim < 1:
        raise ValueError(f"context_length {length} needs context_dim >= 1, got {dim}")
    return ContextEmbedding(dim, length, width)


def given_channels(
    x: Tensor, mask: Tensor | None, given: Tensor | None, enabled: bool, dim: int
) -> Tensor:
    """[x, m g, m] concatenated along ``dim`` (the feature or channel axis) for a network built with
    ``given_input`` (``enabled``); x itself otherwise, where mask and given are refused (CSDI,
    Tashiro et al. 2021: the network sees the observed values and where they are)."""
    if not enabled:
        if mask is not None or given is not None:
            raise ValueError("this network takes no mask / given (build it with given_input=True)")
        return x
    if mask is None and given is None:
        zeros = torch.zeros_like(x)
        return torch.cat([x, zeros, zeros], dim)
    m, g = check_given(x, mask, given)
    shown = torch.where(m, g.to(x.dtype), 0.0)
    return torch.cat([x, shown, m.to(x.dtype)], dim)


def film(h: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """h (1 + s) + b: FiLM (Perez et al. 2018) around the identity, s = b = 0 leaving h as it is."""
    return torch.addcmul(shift, h, 1 + scale)
