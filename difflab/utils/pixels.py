"""8-bit pixels and images in [-1, 1] (Ho et al. 2020): the one conversion every reader and writer of
images uses (data sets, sampling, the command line)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["from_uint8", "to_uint8"]


def to_uint8(x: Tensor) -> Tensor:
    """u = round(127.5 (x + 1)) clipped to [0, 255]: [-1, 1] images to 8-bit pixels (Ho et al., 2020)."""
    return ((x.detach().to(torch.float32) + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def from_uint8(u: Tensor | np.ndarray) -> Tensor:
    """x = u / 127.5 - 1: 8-bit pixels to float32 images in [-1, 1] (Ho et al., 2020)."""
    if isinstance(u, np.ndarray):
        u = torch.from_numpy(u if u.flags.writeable else u.copy())
    if u.dtype != torch.uint8:
        raise ValueError(f"from_uint8 expects 8-bit pixels (uint8), got {u.dtype}")
    return u.to(torch.float32).div_(127.5).sub_(1)
