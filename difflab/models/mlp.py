"""A residual MLP denoiser for vectors (2-D toys, low-dimensional data), small enough to train in seconds.

h_0 = W_in x;  h_{i+1} = h_i + W_2 SiLU(W_1 LN(h_i) + c_i(e));  out = W_out SiLU(LN(h_L)),
with e = SiLU(time embedding + class embedding) and every block's conditioning c_i computed by one
matrix product. W_2 and W_out start at zero, so an untrained network outputs 0.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from difflab.models.context import context_embedding, given_channels
from difflab.models.embeddings import ClassEmbedding, TimeEmbedding, conditioning
from difflab.models.registry import Network, register

__all__ = ["MLP"]


class ResidualBlock(nn.Module):
    """h + W_2 SiLU(W_1 LN(h) + c) (pre-norm residual block, He et al. 2016; Ba et al. 2016)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        return h + self.fc2(F.silu(self.fc1(self.norm(h)) + c))


@register("mlp")
class MLP(Network):
    """Residual MLP D(x_t, t, y) on vectors [B, dim] with Fourier time features (Tancik et al. 2020).

    ``time_embedding`` "fourier" (features N(0, fourier_scale^2)) suits unit-scale time inputs
    (t in [0, 1], log(sigma) / 4), "positional" the DDPM scale [0, 1000]; ``num_classes`` > 0 adds a
    class embedding with a null class (label -1); ``context_dim`` > 0 a context [B, context_dim]
    (or [B, context_length, context_dim], flattened) added to the time embedding; ``given_input``
    the input [x, m g, m] of given entries (:mod:`difflab.models.context`).
    """

    def __init__(
        self,
        *,
        dim: int = 2,
        width: int = 128,
        depth: int = 3,
        num_classes: int = 0,
        time_embedding: str = "fourier",
        fourier_scale: float = 16.0,
        context_dim: int = 0,
        context_length: int = 0,
        given_input: bool = False,
    ) -> None:
        super().__init__(locals())
        self.dim, self.width, self.num_classes = dim, width, num_classes
        self.context_dim, self.given_input = context_dim, given_input
        self.time_embed = TimeEmbedding(width, time_embedding, fourier_scale=fourier_scale)
        self.class_embed = ClassEmbedding(num_classes, width) if num_classes > 0 else None
        self.context_embed = context_embedding(context_dim, context_length, width)
        self.cond = nn.Linear(width, depth * width)
        self.input = nn.Linear(3 * dim if given_input else dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(depth))
        self.norm, self.out = nn.LayerNorm(width), nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(
        self,
        x: Tensor,
        time: Tensor,
        labels: Tensor | None = None,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        given: Tensor | None = None,
    ) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP expects vectors [B, {self.dim}], got shape {tuple(x.shape)}")
        emb = conditioning(
            self.time_embed, self.class_embed, time, labels, x, self.context_embed, context
        )
        cond = self.cond(F.silu(emb)).split(self.width, dim=1)
        h = self.input(given_channels(x, mask, given, self.given_input, -1))
        for block, c in zip(self.blocks, cond):
            h = block(h, c)
        return self.out(F.silu(self.norm(h))).to(x.dtype)
