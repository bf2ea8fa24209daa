"""One transformer for text, bidirectional (masked or uniform-state diffusion) or causal
(autoregressive baseline).

tokens [B, L] -> logits [B, L, V]. The input vocabulary has one extra id, V: the mask token of a
masked diffusion model, or the start-of-sequence token of an autoregressive one. A masked diffusion
network takes no time input: its optimal x0-prediction depends on z_t only, not on t (Ou et al.
2024; Zheng et al. 2024, "time-agnostic"). A uniform-state one needs the noise level: a token of
z_t does not say whether it was resampled, so ``level=True`` adds an embedding of alpha_t.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from difflab.models.attention import Attention
from difflab.models.embeddings import TimeEmbedding

__all__ = ["Transformer"]


class Block(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)) (pre-LN, Xiong et al. 2020)."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, dropout: float, causal: bool
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, causal=causal, rotary=True)
        self.norm2 = nn.LayerNorm(dim)
        inner = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, inner), nn.GELU(), nn.Linear(inner, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


class Transformer(nn.Module):
    """Token embeddings, ``depth`` pre-LN blocks whose attention carries rotary position embeddings
    (Su et al. 2021; MDLM's backbone uses them too: a bidirectional model learns relative positions
    far faster than from learned absolute ones), LayerNorm, linear head to V logits (the extra
    input id V is never predicted). ``causal`` makes position i see positions <= i only.
    ``level``: the network takes a noise level alpha [B] in [0, 1] too, ``net(tokens, alpha)``,
    added to every token embedding as e(1000 (1 - alpha)) (the DDPM positional time embedding, Ho
    et al. 2020). ``config`` rebuilds the same network: ``Transformer(**net.config)``."""

    def __init__(
        self,
        *,
        vocab_size: int,
        context: int,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        causal: bool = False,
        level: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("context", context), ("depth", depth)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"transformer {name} must be a positive integer, got {value!r}")
        self.config: dict[str, Any] = {
            "vocab_size": vocab_size,
            "context": context,
            "dim": dim,
            "depth": depth,
            "heads": heads,
            "mlp_ratio": mlp_ratio,
            "dropout": dropout,
            "causal": causal,
            "level": level,
        }
        self.vocab_size, self.context, self.causal = vocab_size, context, causal
        self.embed = nn.Embedding(vocab_size + 1, dim)
        self.level = TimeEmbedding(dim) if level else None
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, dropout, causal) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @property
    def special_id(self) -> int:
        """The extra input id V: the mask token (bidirectional) or start of sequence (causal)."""
        return self.vocab_size

    def forward(self, tokens: Tensor, alpha: Tensor | None = None) -> Tensor:
        if tokens.ndim != 2 or tokens.dtype != torch.long:
            raise ValueError(
                f"the transformer takes token ids [B, L] (int64), got {tuple(tokens.shape)} "
                f"{tokens.dtype}"
            )
        if tokens.shape[1] > self.context:
            raise ValueError(
                f"sequence length {tokens.shape[1]} exceeds the transformer's context {self.context}"
            )
        if (alpha is None) != (self.level is None):
            raise ValueError(
                "this transformer takes a noise level alpha [B]"
                if self.level is not None
                else "this transformer takes no noise level (it was built with level=False)"
            )
        h = self.embed(tokens)
        if self.level is not None:
            alpha = torch.as_tensor(alpha, device=tokens.device).expand(tokens.shape[0])
            h = h + self.level(1000 * (1 - alpha))[:, None].to(h.dtype)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))
