"""Text metrics: held-out bits per token (exact for an autoregressive model, the ELBO bound for a
diffusion model), generative perplexity under a judge model, unigram entropy, and the share of
words a text shares with the training text."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from difflab.text.model import TextModel

__all__ = ["bits_per_token", "generative_perplexity", "known_words", "unigram_entropy"]


def bits_per_token(
    model: TextModel, windows: Tensor, draws: int = 1, batch_size: int = 64, seed: int = 0
) -> tuple[float, float]:
    """Mean bits per token of ``windows`` [N, L] and its standard error: -log2 p exactly
    (autoregressive), or the masked model's negative ELBO averaged over ``draws`` Monte-Carlo
    draws of (t, z_t) per window (antithetic times within each batch), an upper bound."""
    if model.kind == "autoregressive":
        draws = 1
    g = torch.Generator().manual_seed(seed)
    values = torch.cat(
        [model.nll(x, g) for _ in range(draws) for x in windows.split(batch_size)]
    ).reshape(draws, -1)
    per_window = values.mean(0) / (windows.shape[1] * math.log(2))
    se = float(per_window.std()) / math.sqrt(len(per_window)) if len(per_window) > 1 else 0.0
    return float(per_window.mean()), se


def generative_perplexity(judge: TextModel, tokens: Tensor, batch_size: int = 64) -> float:
    """exp of the judge's mean negative log-likelihood per token of samples [N, L] (an
    autoregressive judge; Dieleman et al. 2022, Lou et al. 2024). Lower is more likely under the
    judge; it rewards low-entropy text too, so read it next to :func:`unigram_entropy`."""
    if judge.kind != "autoregressive":
        raise ValueError(f"the judge must be an autoregressive model, {judge.name} is {judge.kind}")
    nll = torch.cat([judge.nll(x) for x in tokens.split(batch_size)])
    return math.exp(float(nll.sum()) / tokens.numel())


def unigram_entropy(tokens: Tensor, vocab_size: int) -> float:
    """Entropy in bits of the token frequencies of ``tokens``: lower-temperature sampling lowers it."""
    p = torch.bincount(tokens.reshape(-1), minlength=vocab_size).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum())


def known_words(texts: Iterable[str], vocabulary: set[str]) -> float:
    """The share of the whitespace-separated words of ``texts`` that are in ``vocabulary`` (e.g.
    ``set(training_text.split())``, punctuation attached as it is there): a check that samples are
    made of real words (tiny Shakespeare's held-out text: about 0.95)."""
    words = [w for text in texts for w in text.split()]
    return sum(w in vocabulary for w in words) / len(words) if words else 0.0
