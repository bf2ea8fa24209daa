"""A denoiser (or network) that counts what it is asked: the NFE a sampler spends, as spent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

__all__ = ["CountingDenoiser"]


class CountingDenoiser:
    """Wraps a denoiser, or any network called with a batch x [B, ...] first, and counts its
    ``calls`` (one call = one NFE, whatever the batch) and its ``rows`` (the samples evaluated,
    summed over calls). Other attributes are the wrapped callable's (e.g. a text network's
    ``vocab_size``)."""

    def __init__(self, denoiser: Callable[..., Tensor]) -> None:
        self.denoiser, self.calls, self.rows = denoiser, 0, 0

    def __call__(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        self.calls += 1
        self.rows += x.shape[0]
        return self.denoiser(x, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "denoiser":  # not set yet (copy, pickle)
            raise AttributeError(name)
        return getattr(self.denoiser, name)
