"""CSDI's denoiser for multivariate time series (Tashiro et al. 2021): attention over time and over
features, with the observed entries as conditioning.

x is a window [B, L, K] (time steps, features); every entry (l, k) (or, with ``patch`` P, every P
consecutive steps of one feature) is one token of C channels, made from [x, m g, m] (the noisy value, the given value where the mask m holds, the mask; CSDI's
conditional input). Each residual layer adds the noise-level embedding, runs a transformer layer
along time (per feature, L tokens) and one along features (per time step, K tokens), adds the side
information (a sin-cos embedding of the time step, a learned embedding of the feature, the mask) and
gates it, tanh(a) sigmoid(b) (WaveNet's gated unit, as CSDI's residual block); the skip outputs of
all layers, summed and scaled by 1/sqrt(layers), are projected to one value per entry.

Without ``given_input`` the network sees x alone (the unconditional model of TSDiff, Kollovieh et
al. 2023, used for forecasting by observation self-guidance); with it, a mask of zeros asks for the
unconditional model too, so one network trained with some empty masks serves both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.models.attention import Attention
from difflab.models.context import given_channels
from difflab.models.embeddings import TimeEmbedding, batch_time, class_index, positional
from difflab.models.registry import Network, register

__all__ = ["CSDI"]


class AxisTransformer(nn.Module):
    """One pre-LN transformer layer over one axis of [B, L, K, C]: h + Attn(LN h), h + MLP(LN h)
    along time (``axis`` 1) or features (``axis`` 2) (Vaswani et al. 2017; CSDI's two encoders)."""

    def __init__(self, channels: int, heads: int, axis: int) -> None:
        super().__init__()
        self.axis = axis
        self.norm1 = nn.LayerNorm(channels)
        self.attn = Attention(channels, heads)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(
            nn.Linear(channels, 2 * channels), nn.GELU(), nn.Linear(2 * channels, channels)
        )

    def forward(self, h: Tensor) -> Tensor:
        length, k, c = h.shape[1:]
        if (length if self.axis == 1 else k) == 1:
            return h
        seq = h.transpose(1, 2) if self.axis == 1 else h  # the attended axis second to last
        flat = seq.reshape(-1, seq.shape[2], c)
        flat = flat + self.attn(self.norm1(flat))
        flat = flat + self.mlp(self.norm2(flat))
        seq = flat.reshape(seq.shape)
        return seq.transpose(1, 2) if self.axis == 1 else seq


class ResidualLayer(nn.Module):
    """y = T_feat(T_time(h + W_t e_t)); u = W_y y + W_s s + W_m m; z = tanh(u_a) sigmoid(u_b);
    (h + W_r z) / sqrt(2) and skip W_k z (CSDI's residual block, Tashiro et al. 2021)."""

    def __init__(self, channels: int, heads: int, side: int, patch: int) -> None:
        super().__init__()
        self.time = nn.Linear(channels, channels)
        self.along_time = AxisTransformer(channels, heads, axis=1)
        self.along_features = AxisTransformer(channels, heads, axis=2)
        self.mid = nn.Linear(channels, 2 * channels)
        self.side = nn.Linear(side, 2 * channels)  # the batch shares s: W_s s is [1, L, K, 2C]
        self.mask = nn.Linear(patch, 2 * channels, bias=False)
        self.out = nn.Linear(channels, 2 * channels)

    def forward(self, h: Tensor, emb: Tensor, side: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        y = h + self.time(emb)[:, None, None]
        y = self.along_features(self.along_time(y))
        a, b = (self.mid(y) + self.side(side) + self.mask(mask)).chunk(2, dim=-1)
        residual, skip = self.out(torch.tanh(a) * torch.sigmoid(b)).chunk(2, dim=-1)
        return (h + residual) / math.sqrt(2.0), skip


@register("csdi")
class CSDI(Network):
    """CSDI's denoiser D(x_t, t | m, g) on windows [B, L, dim] (module docstring; Tashiro et al.
    2021): ``channels`` per token, ``layers`` residual layers of ``heads``-head attention along
    time and features, side information of ``time_features`` + ``feature_features`` channels,
    ``given_input`` the conditional input [x, m g, m]. ``patch`` > 1 makes a token of ``patch``
    consecutive steps of one feature (PatchTST's patches, Nie et al. 2023: L / patch tokens along
    time, patch^2 less attention). ``time_embedding`` "fourier" suits EDM's log-sigma time,
    "positional" the DDPM time scale."""

    def __init__(
        self,
        *,
        dim: int = 1,
        channels: int = 64,
        layers: int = 4,
        heads: int = 8,
        patch: int = 1,
        time_features: int = 128,
        feature_features: int = 16,
        given_input: bool = True,
        num_classes: int = 0,
        time_embedding: str = "fourier",
    ) -> None:
        super().__init__(locals())
        if channels % heads:
            raise ValueError(f"channels {channels} are not divisible by {heads} heads")
        if patch < 1:
            raise ValueError(f"patch must be >= 1, got {patch}")
        self.dim, self.given_input, self.patch = dim, given_input, patch
        self.time_features = time_features
        self.input = nn.Linear((3 if given_input else 1) * patch, channels)
        self.noise_embed = TimeEmbedding(channels, time_embedding, features=128)
        self.feature_embed = nn.Embedding(dim, feature_features)
        side = time_features + feature_features
        self.layers = nn.ModuleList(
            ResidualLayer(channels, heads, side, patch) for _ in range(layers)
        )
        self.skip = nn.Linear(channels, channels)
        self.output = nn.Linear(channels, patch)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def _side(self, tokens: int, like: Tensor) -> Tensor:
        """[1, L / patch, K, side]: sin-cos of the token's first time step and the feature's
        embedding, the side information shared by the batch."""
        starts = torch.arange(tokens, device=like.device) * self.patch
        steps = positional(starts, self.time_features)
        features = self.feature_embed.weight
        k = features.shape[0]
        return torch.cat(
            [steps[:, None].expand(tokens, k, -1), features[None].expand(tokens, k, -1)], dim=-1
        )[None].to(like.dtype)

    def _tokens(self, v: Tensor) -> Tensor:
        """[B, L, K, c] -> [B, L / patch, K, patch c] (L padded at the end to a multiple)."""
        b, length, k, c = v.shape
        pad = -length % self.patch
        if pad:
            v = F.pad(v, (0, 0, 0, 0, 0, pad))
        v = v.reshape(b, -1, self.patch, k, c).permute(0, 1, 3, 2, 4)
        return v.reshape(b, v.shape[1], k, self.patch * c)

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
                f"CSDI expects windows [B, L, {self.dim}] (time steps, features), got shape "
                f"{tuple(x.shape)}"
            )
        if context is not None:
            raise ValueError("CSDI is conditioned on given entries (mask, given), not a context")
        b, length, k = x.shape
        class_index(labels, 0, b, x.device)
        emb = self.noise_embed(batch_time(time, x))
        entries = given_channels(
            x[..., None], _entries(mask, x), _entries(given, x), self.given_input, -1
        )
        h = F.relu(self.input(self._tokens(entries)))
        side = self._side(h.shape[1], x)
        m = torch.zeros_like(x) if mask is None else _entries(mask, x)[..., 0]
        m = self._tokens(m.to(x.dtype)[..., None])
        skips = torch.zeros_like(h)
        for layer in self.layers:
            h, skip = layer(h, emb, side, m)
            skips = skips + skip
        out = self.output(F.relu(self.skip(skips / math.sqrt(len(self.layers)))))
        out = out.reshape(b, -1, k, self.patch).permute(0, 1, 3, 2).reshape(b, -1, k)
        return out[:, :length].to(x.dtype)


def _entries(value: Tensor | None, x: Tensor) -> Tensor | None:
    """A mask or given values shaped like x [B, L, K], as per-entry channels [B, L, K, 1]."""
    if value is None:
        return None
    return torch.as_tensor(value, device=x.device).expand_as(x)[..., None]
