"""Per-dimension normalization of observations and actions, saved with a model as buffers.

    norm = Normalizer.fit(actions)        # actions [..., D]; mode "minmax" (default) or "meanstd"
    y = norm(x);  x = norm.unnormalize(y)

"minmax" maps each dimension's [min, max] onto [-1, 1], as Diffusion Policy does for actions and
low-dimensional observations (Chi et al. 2023, its LinearNormalizer with mode "limits"); "meanstd"
standardizes. A dimension whose range (or std) is below ``EPS`` is only centred (scale 1), so a
constant input maps to 0, as in Diffusion Policy. The statistics are buffers of the module: a policy
that holds its normalizers as submodules saves and loads them with its weights, and
``Normalizer(dim, mode)`` followed by ``load_state_dict`` rebuilds one.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from difflab.utils.names import check_name

__all__ = ["EPS", "MODES", "Normalizer"]

MODES = ("minmax", "meanstd")
EPS = 1e-4  # Diffusion Policy's range_eps


class Normalizer(nn.Module):
    """y = (x - c) / s per dimension: c = (max + min) / 2, s = (max - min) / 2 ("minmax", onto
    [-1, 1]) or c = mean, s = std ("meanstd"); s = 1 where it is below EPS (Chi et al. 2023)."""

    low: Tensor
    high: Tensor
    mean: Tensor
    std: Tensor

    def __init__(self, dim: int, mode: str = "minmax") -> None:
        super().__init__()
        check_name("normalization mode", mode, MODES)
        if dim < 1:
            raise ValueError(f"a normalizer needs dim >= 1, got {dim}")
        self.mode = mode
        self.register_buffer("low", -torch.ones(dim))
        self.register_buffer("high", torch.ones(dim))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @classmethod
    def fit(cls, data: Tensor, mode: str = "minmax") -> Normalizer:
        """The normalizer of ``data`` [..., D]: its per-dimension min, max, mean and std."""
        if data.ndim < 1 or data.numel() == 0 or not data.dtype.is_floating_point:
            raise ValueError(
                f"fit needs float data [..., D] with samples, got {data.dtype} {list(data.shape)}"
            )
        rows = data.detach().reshape(-1, data.shape[-1]).double()
        if not bool(torch.isfinite(rows).all()):
            raise ValueError("fit: data contain NaN or inf")
        norm = cls(rows.shape[1], mode)
        norm.low.copy_(rows.min(0).values)
        norm.high.copy_(rows.max(0).values)
        norm.mean.copy_(rows.mean(0))
        norm.std.copy_(rows.std(0, correction=0))
        return norm

    @property
    def dim(self) -> int:
        return len(self.low)

    def center_scale(self) -> tuple[Tensor, Tensor]:
        """(c, s) of y = (x - c) / s, each [D]."""
        if self.mode == "minmax":
            center, scale = (self.high + self.low) / 2, (self.high - self.low) / 2
            small = self.high - self.low < EPS
        else:
            center, scale = self.mean, self.std
            small = self.std < EPS
        return center, torch.where(small, torch.ones_like(scale), scale)

    def forward(self, x: Tensor) -> Tensor:
        """Normalize x [..., D]."""
        center, scale = self.center_scale()
        return (x - center.to(x.dtype)) / scale.to(x.dtype)

    def unnormalize(self, y: Tensor) -> Tensor:
        """x = c + s y, the inverse of :meth:`forward`."""
        center, scale = self.center_scale()
        return y * scale.to(y.dtype) + center.to(y.dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, mode={self.mode!r}"
