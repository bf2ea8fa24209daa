"""An exact text model for tests: a joint distribution over all V^L sequences of a short length,
whose x0-predictions are computed by enumeration: p(x^l | unmasked tokens of z) for masked
diffusion, p(x^l | z_t) for uniform-state diffusion (:class:`UniformPosterior`)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["JointTable", "UniformPosterior"]


class JointTable:
    """p(x) = probs[x] over x in {0..V-1}^L (probs: a tensor of shape [V] * L summing to 1).

    Called on z [B, L] (mask id V) it returns log p(x^l = v | x^j = z^j for unmasked j) [B, L, V],
    the exact x0-prediction of a masked diffusion model (time-agnostic by construction).
    """

    def __init__(self, probs: Tensor) -> None:
        probs = torch.as_tensor(probs, dtype=torch.float64)
        if probs.ndim < 1 or len(set(probs.shape)) != 1:
            raise ValueError(f"probs must have shape [V] * L, got {tuple(probs.shape)}")
        if bool((probs < 0).any()) or abs(float(probs.sum()) - 1) > 1e-9:
            raise ValueError("probs must be nonnegative and sum to 1")
        self.vocab_size, self.length = probs.shape[0], probs.ndim
        self.probs = probs.reshape(-1)
        grid = itertools.product(range(self.vocab_size), repeat=self.length)
        # every sequence [V^L, L], row-major like probs, and its one-hot tokens [V^L, L * V]
        self.sequences = torch.tensor(list(grid), dtype=torch.long)
        onehot = torch.nn.functional.one_hot(self.sequences, self.vocab_size)
        self._onehot = onehot.reshape(len(self.sequences), -1).double()

    @classmethod
    def random(cls, vocab: int, length: int, sharpness: float = 2.0, seed: int = 0) -> JointTable:
        """probs proportional to exp(sharpness * N(0, 1)) per sequence: strongly dependent tokens."""
        g = torch.Generator().manual_seed(seed)
        logits = sharpness * torch.randn((vocab,) * length, generator=g, dtype=torch.float64)
        return cls(logits.reshape(-1).softmax(0).reshape((vocab,) * length))

    def __call__(self, z: Tensor) -> Tensor:
        weights = self.probs.expand(len(z), -1)
        for pos in range(self.length):  # drop the sequences that disagree with an unmasked token
            given = z[:, pos, None]
            weights = weights * ((given == self.sequences[:, pos]) | (given == self.vocab_size))
        return torch.log(weights @ self._onehot).reshape(len(z), self.length, self.vocab_size)

    def index(self, x: Tensor) -> Tensor:
        """The row of each sequence x [B, L] in :attr:`sequences` (base-V digits)."""
        powers = self.vocab_size ** torch.arange(self.length - 1, -1, -1)
        return (x * powers).sum(-1)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) of sequences x [B, L]."""
        return torch.log(self.probs[self.index(x)])

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact samples [n, L]."""
        return self.sequences[
            torch.multinomial(self.probs, n, replacement=True, generator=generator)
        ]

    def histogram(self, x: Tensor | Sequence[Sequence[int]]) -> Tensor:
        """Counts of each of the V^L sequences among the rows of x."""
        return torch.bincount(self.index(torch.as_tensor(x)), minlength=len(self.probs))


class UniformPosterior:
    """The exact network of uniform-state diffusion (:mod:`difflab.text.uniform`) of a
    :class:`JointTable`: called on z_t [B, L] and alpha_t [B] it returns log mu(x^l = v) [B, L, V],
    mu = p(x^l | z_t^k for k != l), p(x | z_t^{-l}) proportional to
    p(x) prod_{k != l} (alpha_t [z^k = x^k] + (1 - alpha_t) / V), so that
    :func:`~difflab.text.uniform.x0_logits` makes it the posterior p(x^l | z_t) (Bayes' rule with
    the forward process of Austin et al. 2021)."""

    def __init__(self, table: JointTable) -> None:
        self.table, self.vocab_size = table, table.vocab_size

    def __call__(self, z: Tensor, alpha: Tensor) -> Tensor:
        table, v = self.table, self.vocab_size
        alpha = torch.as_tensor(alpha, dtype=torch.float64).expand(len(z))[:, None]
        if bool((alpha >= 1).any()):
            raise ValueError("alpha_t must be below 1 (at alpha 1 nothing is noised)")
        weights = table.probs.expand(len(z), -1)
        like = []
        for k in range(table.length):
            same = z[:, k, None] == table.sequences[:, k]
            like.append(torch.where(same, alpha + (1 - alpha) / v, (1 - alpha) / v))
            weights = weights * like[-1]
        mu = torch.stack(  # leave out token l's own likelihood
            [
                (weights / like[k]) @ table._onehot[:, k * v : (k + 1) * v]
                for k in range(table.length)
            ],
            1,
        )
        return torch.log(mu / mu.sum(-1, keepdim=True))
