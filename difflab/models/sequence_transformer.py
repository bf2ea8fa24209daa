"""A transformer denoiser for sequences: time steps or action tokens, each with its own noise level.

x is a sequence [B, T, D] (horizon, features); every time step is one token. Each token's LayerNorm
scale / shift and residual gates are regressed from c = SiLU(e_t(t_i) + e_y + e_c): its *own* time
embedding (one time input per token [B, T], or one per sample [B] shared by all tokens) plus the
class and context embeddings, by a layer initialized at zero (adaLN-Zero per token; Peebles & Xie
2023, with per-token noise levels as in diffusion forcing, Chen et al. 2024). A context sequence
[B, Tc, Dc] (an observation history) is attended to by cross-attention in every block (a zero-
initialized output projection, so it starts as the identity); a context vector [B, Dc] (or the
sequence flattened, ``cross_attention=False``) joins c. ``causal`` restricts self-attention to
earlier tokens, so the output at step t does not depend on x after t (streaming, forecasting).
Positions: fixed 1-D sin-cos or learned tables over ``horizon`` steps, rotary (relative, any
length), or none (then the network is equivariant to permutations of the tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.core.tensors import check_name
from difflab.models.attention import Attention, CrossAttention
from difflab.models.context import ContextInput, context_embedding, film, given_channels
from difflab.models.embeddings import (
    ClassEmbedding,
    TimeEmbedding,
    batch_time,
    class_index,
    context_term,
    positional,
)
from difflab.models.registry import Network, register

__all__ = ["POSITIONS", "SequenceTransformer"]

POSITIONS = ("sincos", "learned", "rotary", "none")


def _zero(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class SequenceBlock(nn.Module):
    """x + g1 Attn(LN(x)(1 + s1) + b1); x + CrossAttn(LN(x), ctx); x + g2 MLP(LN(x)(1 + s2) + b2),
    (s, b, g) = W c per token, W = 0 at init (adaLN-Zero, Peebles & Xie 2023; cross-attention as in
    PixArt-alpha, Chen et al. 2023)."""

    def __init__(
        self,
        hidden: int,
        heads: int,
        mlp_ratio: float,
        causal: bool,
        rotary: bool,
        cross: bool,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads, causal=causal, rotary=rotary)
        if cross:
            self.norm_cross = nn.LayerNorm(hidden, eps=1e-6)
            self.cross = CrossAttention(hidden, hidden, heads)
            _zero(self.cross.proj)
        else:
            self.cross = None
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden)
        )
        self.ada = _zero(nn.Linear(hidden, 6 * hidden))

    def forward(self, x: Tensor, c: Tensor, context: Tensor | None) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)
        x = x + gate1 * self.attn(film(self.norm1(x), scale1, shift1))
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), context)
        return x + gate2 * self.mlp(film(self.norm2(x), scale2, shift2))


@register("sequence_transformer")
class SequenceTransformer(Network):
    """Transformer D(x_t, t, y, c) on sequences [B, T, dim] with a noise level per token (module
    docstring; Peebles & Xie 2023).

    ``horizon`` is the longest T (the position tables' length); ``position_embedding`` one of
    POSITIONS; ``causal`` makes self-attention causal; ``num_classes`` > 0 adds a class embedding
    with a null class (label -1); ``context_dim`` > 0 a context [B, context_dim] or, with
    ``context_length`` > 0, [B, context_length, context_dim] attended by cross-attention (or
    flattened into c when ``cross_attention`` is False), with a learned null context;
    ``given_input`` the input [x, m g, m] of given entries (:mod:`difflab.models.context`).
    ``time_embedding`` "positional" suits the DDPM time scale [0, 1000], "fourier" unit scale.
    """

    def __init__(
        self,
        *,
        dim: int = 2,
        horizon: int = 16,
        hidden_size: int = 256,
        depth: int = 6,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        causal: bool = False,
        position_embedding: str = "sincos",
        num_classes: int = 0,
        context_dim: int = 0,
        context_length: int = 0,
        cross_attention: bool = True,
        given_input: bool = False,
        time_embedding: str = "positional",
    ) -> None:
        super().__init__(locals())
        check_name("position embedding", position_embedding, POSITIONS)
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.dim, self.horizon, self.num_classes = dim, horizon, num_classes
        self.context_dim, self.given_input = context_dim, given_input
        self.position_embedding = position_embedding
        self.input = nn.Linear(dim * (3 if given_input else 1), hidden_size)
        if position_embedding in ("sincos", "learned"):
            table = positional(torch.arange(horizon), hidden_size)[None]
            if position_embedding == "learned":
                self.pos = nn.Parameter(table)
            else:
                self.register_buffer("pos", table, persistent=False)
        self.time_embed = TimeEmbedding(hidden_size, time_embedding, features=256)
        self.class_embed = ClassEmbedding(num_classes, hidden_size) if num_classes > 0 else None
        cross = bool(context_dim and context_length and cross_attention)
        if cross:
            self.context = ContextInput(context_dim, context_length)
            self.context_proj = nn.Linear(context_dim, hidden_size)
            table = positional(torch.arange(context_length), hidden_size)[None]
            self.register_buffer("context_pos", table, persistent=False)
            self.context_embed = None
        else:
            self.context = None
            self.context_embed = context_embedding(context_dim, context_length, hidden_size)
        self.blocks = nn.ModuleList(
            SequenceBlock(
                hidden_size, heads, mlp_ratio, causal, position_embedding == "rotary", cross
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.ada = _zero(nn.Linear(hidden_size, 2 * hidden_size))
        self.out = _zero(nn.Linear(hidden_size, dim))

    def _conditioning(
        self, x: Tensor, time: Tensor, labels: Tensor | None, context: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """(c = SiLU(e_t + e_y + e_c) as [B, T or 1, hidden], the context tokens or None)."""
        b = x.shape[0]
        emb = self.time_embed(batch_time(time, x, per_token=True))
        emb = emb[:, None] if emb.ndim == 2 else emb
        if self.class_embed is None:
            class_index(labels, 0, b, x.device)
        else:
            emb = emb + self.class_embed(labels, b, x.device)[:, None]
        tokens = None
        if self.context is not None:
            ctx = self.context(context, b).to(self.context_proj.weight.dtype)
            tokens = self.context_proj(ctx) + self.context_pos
        else:
            e_c = context_term(self.context_embed, context, b)
            emb = emb if e_c is None else emb + e_c[:, None]
        return F.silu(emb), tokens

    def forward(
        self,
        x: Tensor,
        time: Tensor,
        labels: Tensor | None = None,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        given: Tensor | None = None,
    ) -> Tensor:
        if x.ndim != 3 or x.shape[2] != self.dim:
            raise ValueError(
                f"SequenceTransformer expects sequences [B, T, {self.dim}], got shape "
                f"{tuple(x.shape)}"
            )
        if hasattr(self, "pos") and x.shape[1] > self.horizon:
            raise ValueError(
                f"the sequence has {x.shape[1]} steps, more than horizon {self.horizon} "
                f"({self.position_embedding} positions)"
            )
        c, tokens = self._conditioning(x, time, labels, context)
        h = self.input(given_channels(x, mask, given, self.given_input, -1))
        if hasattr(self, "pos"):
            h = h + self.pos[:, : x.shape[1]]
        for block in self.blocks:
            h = block(h, c, tokens)
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.out(film(self.norm(h), scale, shift)).to(x.dtype)
