"""Small tensor helpers shared by every layer: broadcasting noise levels, validating input."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from difflab.utils.names import check_name, unknown_name

__all__ = [
    "append_dims",
    "as_tensor",
    "broadcast_sigma",
    "check_finite",
    "check_name",
    "check_nonnegative",
    "unknown_name",
]


def as_tensor(value: float | Iterable[float] | Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """A tensor view of ``value``; plain numbers become float64 so nothing is silently rounded."""
    if isinstance(value, Tensor):
        return value if dtype is None else value.to(dtype)
    return torch.as_tensor(value, dtype=dtype or torch.float64)


def append_dims(sigma: Tensor, ndim: int) -> Tensor:
    """Left-aligned broadcast: a noise level of shape [B] (or [B, F], ...) gains trailing unit dims.

    A scalar stays a scalar. This is the DESIGN.md rule that a 1-D sigma is one value per sample.
    """
    if sigma.ndim == 0 or sigma.ndim == ndim:
        return sigma
    if sigma.ndim > ndim:
        raise ValueError(
            f"sigma has {sigma.ndim} dims but x only {ndim}: sigma must be a scalar, one value "
            "per sample [B], or a shape that broadcasts against x from the left"
        )
    return sigma.reshape(*sigma.shape, *([1] * (ndim - sigma.ndim)))


def broadcast_sigma(sigma: Tensor, x: Tensor) -> Tensor:
    """sigma shaped to broadcast against x by the left-aligned rule, or a ValueError naming both shapes."""
    s = append_dims(sigma, x.ndim)
    try:
        fits = torch.broadcast_shapes(s.shape, x.shape) == x.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"sigma of shape {tuple(sigma.shape)} does not fit x of shape {tuple(x.shape)}: use a "
            "scalar, one value per sample [B], or a shape matching x from the left"
        )
    return s


def _check(ok: Tensor, message: str) -> None:
    if (
        ok.device.type != "cpu"
    ):  # no host-device synchronisation: the device raises when it gets there
        torch._assert_async(ok.all(), message)
    elif not bool(ok.all()):
        raise ValueError(message)


def check_nonnegative(sigma: Tensor, what: str = "sigma") -> Tensor:
    """Raise ``ValueError`` naming ``what`` when any value is negative or NaN (inf is allowed)."""
    _check(sigma >= 0, f"{what} must be >= 0 (and not NaN)")
    return sigma


def check_finite(x: Tensor, what: str = "x") -> Tensor:
    """Raise ``ValueError`` naming ``what`` when it holds NaN or inf."""
    _check(torch.isfinite(x), f"{what} contains NaN or inf")
    return x
