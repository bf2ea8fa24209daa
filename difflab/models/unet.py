"""The image UNet of the DDPM++ / ADM family (Ho et al. 2020; Song et al. 2021; Dhariwal & Nichol 2021).

Residual blocks with GroupNorm and scale-shift (adaptive GroupNorm) conditioning on time + class,
self-attention at chosen low resolutions, strided-conv downsampling and nearest + conv upsampling.
The output conv, the last conv of every residual branch and every attention output projection start
at zero, so an untrained network outputs 0 and each block starts as the identity.

The blocks are kept as ``down`` (a ModuleList), ``mid`` and ``up`` (a ModuleList), each called as
``block(h, emb)``, so forward hooks can read or replace any block's output (feature caching such as
DeepCache, Ma et al. 2024); ``up[i]`` takes the previous output concatenated with the matching skip.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.models.attention import Attention
from difflab.models.context import context_embedding, given_channels
from difflab.models.embeddings import ClassEmbedding, TimeEmbedding, conditioning
from difflab.models.registry import Network, register

__all__ = ["UNet", "group_norm"]


def group_norm(channels: int, max_groups: int = 32, min_group_channels: int = 4) -> nn.GroupNorm:
    """GroupNorm (Wu & He 2018) with as many groups as fit: <= 32, >= 4 channels each, dividing C."""
    groups = max(1, min(max_groups, channels // min_group_channels))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """h = x W_skip + conv(SiLU(GN(conv(SiLU(GN(x)))) (1 + s) + b)), (s, b) = W e (Dhariwal & Nichol 2021)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2, self.dropout = group_norm(cout), nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = torch.addcmul(shift, self.norm2(h), 1 + scale)
        return self.skip(x) + self.conv2(self.dropout(F.silu(h)))


class AttentionBlock(nn.Module):
    """x + Attention(GN(x)) over the H*W positions as tokens (Dhariwal & Nichol 2021)."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.attn = Attention(channels, heads)
        _zero(self.attn.proj)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # a view when x is channels_last
        return x + self.attn(tokens).transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    """3x3 convolution with stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Block(nn.Module):
    """A sequence of layers called as ``block(h, emb)``; residual blocks get the embedding."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        for layer in self.layers:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h


@register("unet")
class UNet(Network):
    """eps/x0/v-prediction UNet D(x_t, t, y) of the DDPM++ / ADM family (Dhariwal & Nichol 2021).

    ``channels`` is the base width, ``channel_mult`` its multiplier per resolution level (each level
    after the first halves the image side, so the side must be divisible by 2^(levels - 1)),
    ``attention_resolutions`` the image sides (at ``image_size``) that get self-attention after each
    residual block, ``head_channels`` the width of one attention head, ``num_classes`` > 0 adds a
    class embedding with a null class (label -1). ``time_embedding`` "positional" suits time inputs
    on the DDPM scale [0, 1000], "fourier" unit-scale inputs (t in [0, 1], log(sigma) / 4).
    ``context_dim`` > 0 adds a context [B, context_dim] (or [B, context_length, context_dim],
    flattened) to the time embedding; ``given_input`` makes the input [x, m g, m] (given pixels and
    their mask, the inpainting UNet's input; :mod:`difflab.models.context`).
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        out_channels: int = 0,
        image_size: int = 32,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (8,),
        head_channels: int = 32,
        mid_attention: bool = True,
        dropout: float = 0.0,
        num_classes: int = 0,
        time_embedding: str = "positional",
        context_dim: int = 0,
        context_length: int = 0,
        given_input: bool = False,
    ) -> None:
        out_channels = out_channels or in_channels
        super().__init__(locals())
        levels = len(channel_mult)
        if levels == 0 or image_size % 2 ** (levels - 1):
            raise ValueError(
                f"image_size {image_size} must be divisible by 2^{levels - 1} for {levels} "
                "resolution levels (channel_mult)"
            )
        sides = [image_size // 2**i for i in range(levels)]
        for r in attention_resolutions:
            if r not in sides:
                raise ValueError(
                    f"attention resolution {r} is not one of this UNet's sides {sides} "
                    f"(image_size {image_size}, {levels} levels)"
                )
        self.in_channels, self.num_classes, self.levels = in_channels, num_classes, levels
        emb_dim = 4 * channels
        self.time_embed = TimeEmbedding(emb_dim, time_embedding, features=channels)
        self.class_embed = ClassEmbedding(num_classes, emb_dim) if num_classes > 0 else None
        self.context_embed = context_embedding(context_dim, context_length, emb_dim)
        self.context_dim, self.given_input = context_dim, given_input

        def heads(c: int) -> int:
            return max(1, c // head_channels)

        def res_stage(cin: int, cout: int, side: int) -> Block:
            layers = [ResBlock(cin, cout, emb_dim, dropout)]
            if side in attention_resolutions:
                layers.append(AttentionBlock(cout, heads(cout)))
            return Block(*layers)

        self.input = nn.Conv2d(in_channels * (3 if given_input else 1), channels, 3, padding=1)
        skips, ch = [channels], channels
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(res_stage(ch, channels * mult, sides[level]))
                ch = channels * mult
                skips.append(ch)
            if level < levels - 1:
                self.down.append(Block(Downsample(ch)))
                skips.append(ch)
        mid = [ResBlock(ch, ch, emb_dim, dropout)]
        if mid_attention:
            mid.append(AttentionBlock(ch, heads(ch)))
        self.mid = Block(*mid, ResBlock(ch, ch, emb_dim, dropout))
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                block = res_stage(ch + skips.pop(), channels * mult, sides[level])
                ch = channels * mult
                if level > 0 and i == num_res_blocks:
                    block.layers.append(Upsample(ch))
                self.up.append(block)
        self.out = nn.Sequential(
            group_norm(ch), nn.SiLU(), _zero(nn.Conv2d(ch, out_channels, 3, padding=1))
        )

    def forward(
        self,
        x: Tensor,
        time: Tensor,
        labels: Tensor | None = None,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        given: Tensor | None = None,
    ) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects images [B, {self.in_channels}, H, W], got shape {tuple(x.shape)}"
            )
        factor = 2 ** (self.levels - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(
                f"image sides must be divisible by {factor} for {self.levels} resolution levels, "
                f"got {tuple(x.shape[-2:])}"
            )
        emb = conditioning(
            self.time_embed, self.class_embed, time, labels, x, self.context_embed, context
        )
        emb = F.silu(emb)
        h = self.input(given_channels(x, mask, given, self.given_input, 1))
        skips = [h]
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        h = self.mid(h, emb)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h).to(x.dtype)
