"""The 1-D temporal convolutional UNet of Diffusion Policy (Chi et al. 2023, "Diffusion Policy:
Visuomotor Policy Learning via Action Diffusion", ConditionalUnet1D; after Janner et al. 2022).

x is a sequence [B, T, D] (horizon, features: an action chunk, a time-series window), convolved
along T with the D features as channels. Residual blocks of Conv1d(kernel 5) + GroupNorm(8) + Mish,
FiLM-modulated (Perez et al. 2018) between their two convolutions by scale and bias regressed from
the global condition [time embedding (+ class embedding), context]: the context (an observation,
a goal, or an observation history [B, Tc, Dc] flattened, as Diffusion Policy does with its
observation horizon) is concatenated to the time embedding. Levels of two residual blocks each,
stride-2 convolutions down and transposed stride-2 convolutions up, skip connections. The final
1x1 convolution starts at zero, so an untrained network outputs 0.

Differences from the authors' network, both generalizations: the decoder also uses the first
level's skip, in two residual blocks at full resolution (theirs leaves it unused; the two blocks
are 2.0 M of this network's 67 M parameters at the default widths and dim 2);
the time input may be one per token [B, T] (a noise level per time step: streaming policies,
Høeg et al. 2024), in which case the FiLM parameters vary along T (the time embedding average-pooled
to each level's length). FiLM is written h (1 + s) + b, theirs s h + b: the same family (the bias of
the linear map that predicts s shifts it by one).

With one time per sample the network commutes with shifts of x along T by multiples of its total
downsampling 2^(levels - 1), away from the ends (zero padding), which the tests check.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.models.context import ContextInput, film, given_channels
from difflab.models.embeddings import ClassEmbedding, TimeEmbedding, batch_time, class_index
from difflab.models.registry import Network, register

__all__ = ["TemporalUNet"]


def conv_block(cin: int, cout: int, kernel: int, groups: int) -> nn.Sequential:
    """Mish(GroupNorm(Conv1d(x))), length-preserving (Chi et al. 2023; Wu & He 2018; Misra 2019)."""
    return nn.Sequential(
        nn.Conv1d(cin, cout, kernel, padding=kernel // 2), nn.GroupNorm(groups, cout), nn.Mish()
    )


class ResidualBlock1D(nn.Module):
    """h = B2(B1(x) (1 + s) + b) + W_skip x, (s, b) = W Mish(c) per position of c (Chi et al. 2023)."""

    def __init__(self, cin: int, cout: int, cond_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.block1 = conv_block(cin, cout, kernel, groups)
        self.film = nn.Linear(cond_dim, 2 * cout)
        self.block2 = conv_block(cout, cout, kernel, groups)
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.film(F.mish(cond)).transpose(1, 2).chunk(2, dim=1)
        return self.block2(film(self.block1(x), scale, shift)) + self.skip(x)


class Level(nn.Module):
    """Two residual blocks, then a resampling layer (or none), called as ``level(h, cond)``."""

    def __init__(
        self, cin: int, cout: int, cond_dim: int, kernel: int, groups: int, resample: nn.Module
    ) -> None:
        super().__init__()
        self.res1 = ResidualBlock1D(cin, cout, cond_dim, kernel, groups)
        self.res2 = ResidualBlock1D(cout, cout, cond_dim, kernel, groups)
        self.resample = resample

    def forward(self, h: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """(output after the residual blocks, the same resampled)."""
        h = self.res2(self.res1(h, cond), cond)
        return h, self.resample(h)


@register("temporal_unet")
class TemporalUNet(Network):
    """Diffusion Policy's temporal UNet D(x_t, t, y, c) on sequences [B, T, dim] (Chi et al. 2023).

    ``down_dims`` are the channel widths per level (T must be divisible by 2^(levels - 1));
    ``kernel_size`` (odd) and ``groups`` (dividing every width) those of the convolutions;
    ``embed_dim`` the time embedding's width; ``num_classes`` > 0 adds a class embedding with a
    null class (label -1); ``context_dim`` > 0 a context [B, context_dim] or, with
    ``context_length`` > 0, [B, context_length, context_dim] (flattened), with a learned null
    context; ``given_input`` the input [x, m g, m] of given entries (:mod:`difflab.models.context`).
    ``time_embedding`` "positional" suits the DDPM time scale [0, 1000], "fourier" unit scale.
    """

    def __init__(
        self,
        *,
        dim: int = 2,
        down_dims: Sequence[int] = (256, 512, 1024),
        kernel_size: int = 5,
        groups: int = 8,
        embed_dim: int = 256,
        num_classes: int = 0,
        context_dim: int = 0,
        context_length: int = 0,
        given_input: bool = False,
        time_embedding: str = "positional",
    ) -> None:
        super().__init__(locals())
        widths = list(down_dims)
        if not widths or kernel_size % 2 == 0:
            raise ValueError(
                f"down_dims must name at least one width and kernel_size must be odd, got "
                f"{widths} and {kernel_size}"
            )
        for w in widths:
            if w % groups:
                raise ValueError(f"groups {groups} does not divide the width {w} (down_dims)")
        if context_length and not context_dim:
            raise ValueError(f"context_length {context_length} needs context_dim >= 1")
        self.dim, self.num_classes, self.levels = dim, num_classes, len(widths)
        self.context_dim, self.given_input = context_dim, given_input
        self.time_embed = TimeEmbedding(embed_dim, time_embedding, features=embed_dim)
        self.class_embed = ClassEmbedding(num_classes, embed_dim) if num_classes > 0 else None
        self.context = ContextInput(context_dim, context_length) if context_dim else None
        cond = embed_dim + (self.context.flat_dim if self.context is not None else 0)

        def level(cin: int, cout: int, resample: nn.Module) -> Level:
            return Level(cin, cout, cond, kernel_size, groups, resample)

        last = len(widths) - 1
        ins = [dim * (3 if given_input else 1), *widths[:-1]]
        self.down = nn.ModuleList(
            level(cin, w, nn.Conv1d(w, w, 3, stride=2, padding=1) if i < last else nn.Identity())
            for i, (cin, w) in enumerate(zip(ins, widths))
        )
        self.mid = level(widths[-1], widths[-1], nn.Identity())
        # up level l: [h, skip_l] (2 w_l channels) -> w_{l-1}, upsampled to level l - 1's length
        self.up = nn.ModuleList(
            level(
                2 * widths[i],
                widths[max(i - 1, 0)],
                nn.ConvTranspose1d(widths[i - 1], widths[i - 1], 4, stride=2, padding=1)
                if i > 0
                else nn.Identity(),
            )
            for i in range(last, -1, -1)
        )
        self.out = nn.Sequential(
            conv_block(widths[0], widths[0], kernel_size, groups), nn.Conv1d(widths[0], dim, 1)
        )
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def _conditions(
        self, x: Tensor, time: Tensor, labels: Tensor | None, context: Tensor | None
    ) -> list[Tensor]:
        """The global condition c = [e_t + e_y, context] as [B, T_l, C] per level l (T_l = 1 for
        one time per sample, else T / 2^l, the time embedding average-pooled)."""
        b = x.shape[0]
        emb = self.time_embed(batch_time(time, x, per_token=True))
        emb = emb[:, None] if emb.ndim == 2 else emb
        if self.class_embed is None:
            class_index(labels, 0, b, x.device)
        else:
            emb = emb + self.class_embed(labels, b, x.device)[:, None]
        if self.context is None:
            if context is not None:
                raise ValueError("this network takes no context (build it with context_dim > 0)")
            cond = emb
        else:
            c = self.context(context, b).flatten(1).to(emb.dtype)
            cond = torch.cat([emb, c[:, None].expand(b, emb.shape[1], -1)], dim=2)
        conds = [cond]
        for _ in range(self.levels - 1):
            if cond.shape[1] > 1:
                cond = F.avg_pool1d(cond.transpose(1, 2), 2).transpose(1, 2)
            conds.append(cond)
        return conds

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
                f"TemporalUNet expects sequences [B, T, {self.dim}], got shape {tuple(x.shape)}"
            )
        factor = 2 ** (self.levels - 1)
        if x.shape[1] % factor:
            raise ValueError(
                f"the horizon T must be divisible by {factor} for {self.levels} levels "
                f"(down_dims), got T = {x.shape[1]}"
            )
        conds = self._conditions(x, time, labels, context)
        h = given_channels(x, mask, given, self.given_input, -1).transpose(1, 2)
        skips = []
        for block, cond in zip(self.down, conds):
            skip, h = block(h, cond)
            skips.append(skip)
        h = self.mid(h, conds[-1])[0]
        for block, cond in zip(self.up, reversed(conds)):
            h = block(torch.cat([h, skips.pop()], dim=1), cond)[1]
        return self.out(h).transpose(1, 2).to(x.dtype)
