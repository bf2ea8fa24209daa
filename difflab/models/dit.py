"""The Diffusion Transformer with adaLN-Zero conditioning (Peebles & Xie 2023).

Patchify the image into (H/p)(W/p) tokens, add a 2-D position embedding, run transformer blocks
whose LayerNorm scale/shift and residual gates are regressed from c = time + class embedding with
the regressing layer initialized at zero (so every block starts as the identity), then a final
adaLN layer and a zero-initialized linear map back to patches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.core.tensors import check_name
from difflab.models.attention import Attention
from difflab.models.context import context_embedding, given_channels
from difflab.models.embeddings import ClassEmbedding, TimeEmbedding, conditioning
from difflab.models.registry import Network, register

__all__ = ["DiT", "sincos_2d"]

POSITION_EMBEDDINGS = ("sincos", "learned")


def sincos_2d(dim: int, side: int) -> Tensor:
    """[sin, cos](row w_k) ++ [sin, cos](col w_k), w_k = 10000^(-k / (dim/4)) (He et al. 2022, MAE)."""
    if dim % 4:
        raise ValueError(
            f"a 2-D sin-cos position embedding needs a width divisible by 4, got {dim}"
        )
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    pos = torch.arange(side, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def embed(p: Tensor) -> Tensor:
        angles = p.reshape(-1, 1) * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([embed(rows), embed(cols)], dim=1).float()


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None])


class DiTBlock(nn.Module):
    """x + g1 Attn(LN(x)(1 + s1) + b1), then x + g2 MLP(LN(x)(1 + s2) + b2), (s, b, g) = W c,
    W = 0 at init (adaLN-Zero, Peebles & Xie 2023)."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden)
        )
        self.ada = nn.Linear(hidden, 6 * hidden)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(_modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(_modulate(self.norm2(x), shift2, scale2))


@register("dit")
class DiT(Network):
    """DiT D(x_t, t, y) on images [B, C, image_size, image_size] (Peebles & Xie 2023).

    ``patch_size`` must divide ``image_size``; ``position_embedding`` is "sincos" (fixed) or
    "learned"; ``num_classes`` > 0 adds a class embedding with a null class (label -1);
    ``time_embedding`` "positional" suits the DDPM time scale [0, 1000], "fourier" unit scale;
    ``context_dim`` > 0 adds a context [B, context_dim] (or [B, context_length, context_dim],
    flattened) to c, ``given_input`` makes the input [x, m g, m] (:mod:`difflab.models.context`).
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        out_channels: int = 0,
        image_size: int = 32,
        patch_size: int = 2,
        hidden_size: int = 384,
        depth: int = 12,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        position_embedding: str = "sincos",
        time_embedding: str = "positional",
        context_dim: int = 0,
        context_length: int = 0,
        given_input: bool = False,
    ) -> None:
        out_channels = out_channels or in_channels
        super().__init__(locals())
        if image_size % patch_size:
            raise ValueError(f"patch_size {patch_size} does not divide image_size {image_size}")
        check_name("position embedding", position_embedding, POSITION_EMBEDDINGS)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.image_size, self.patch_size, self.num_classes = image_size, patch_size, num_classes
        side = image_size // patch_size
        self.context_dim, self.given_input = context_dim, given_input
        cin = in_channels * (3 if given_input else 1)
        self.patchify = nn.Conv2d(cin, hidden_size, patch_size, stride=patch_size)
        pos = sincos_2d(hidden_size, side)[None]
        if position_embedding == "learned":
            self.pos = nn.Parameter(pos)
        else:
            self.register_buffer("pos", pos, persistent=False)
        self.time_embed = TimeEmbedding(hidden_size, time_embedding, features=256)
        self.class_embed = ClassEmbedding(num_classes, hidden_size) if num_classes > 0 else None
        self.context_embed = context_embedding(context_dim, context_length, hidden_size)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(hidden_size, 2 * hidden_size)
        self.out = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self._initialize()

    def _initialize(self) -> None:
        """Xavier-uniform linear layers, N(0, 0.02) embeddings, zero adaLN and output (DiT's init)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patchify.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patchify.bias)
        for layer in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.table.weight, std=0.02)
        for layer in [b.ada for b in self.blocks] + [self.ada, self.out]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        x: Tensor,
        time: Tensor,
        labels: Tensor | None = None,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        given: Tensor | None = None,
    ) -> Tensor:
        n = self.image_size
        if x.ndim != 4 or x.shape[1:] != (self.in_channels, n, n):
            raise ValueError(
                f"DiT expects images [B, {self.in_channels}, {n}, {n}], got shape {tuple(x.shape)}"
            )
        emb = conditioning(
            self.time_embed, self.class_embed, time, labels, x, self.context_embed, context
        )
        c = F.silu(emb)
        h = self.patchify(given_channels(x, mask, given, self.given_input, 1))
        h = h.flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada(c).chunk(2, dim=1)
        h = self.out(_modulate(self.norm(h), shift, scale))
        return self._unpatchify(h).to(x.dtype)

    def _unpatchify(self, h: Tensor) -> Tensor:
        """[B, (n/p)^2, p*p*C] tokens back to [B, C, n, n] images."""
        b, p, side = h.shape[0], self.patch_size, self.image_size // self.patch_size
        h = h.reshape(b, side, side, p, p, self.out_channels)
        return h.permute(0, 5, 1, 3, 2, 4).reshape(b, self.out_channels, side * p, side * p)
