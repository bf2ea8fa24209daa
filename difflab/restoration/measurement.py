"""The measurement every restoration method conditions on, as one object checked once:

    y = A(x0) + noise_std n,   n ~ N(0, I)

so that DPS, PiGDM, DDRM and twisted SMC share one signature,

    method(denoiser, measurement, x, sigmas, *, generator=None, callback=None, cond=None, **options)
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import Tensor

from difflab.restoration.operators import LinearOperator

__all__ = ["Measurement", "Operator", "takes_measurement"]

Operator = LinearOperator | Callable[[Tensor], Tensor]
Method = TypeVar("Method", bound=Callable[..., Any])


@dataclass(frozen=True, eq=False)
class Measurement:
    """y [G, ...] = A(x0) + noise_std n: the ``operator`` A (a :class:`LinearOperator`, or any
    differentiable callable x [B, ...] -> y [B, ...], a nonlinear A), one measurement per row of y,
    and the noise std (a number >= 0; a callable A needs > 0). Constructing it checks that the three
    go together; :meth:`check` checks a start x against it."""

    operator: Operator
    y: Tensor
    noise_std: float

    def __post_init__(self) -> None:
        op, y, noise_std = self.operator, self.y, self.noise_std
        if not callable(op):
            raise ValueError(f"operator must be a LinearOperator or a callable, got {op!r}")
        if (
            isinstance(noise_std, bool)
            or not isinstance(noise_std, int | float)
            or not (math.isfinite(noise_std) and noise_std >= 0)
        ):
            raise ValueError(f"noise_std must be a number >= 0, got {noise_std!r}")
        object.__setattr__(self, "noise_std", float(noise_std))
        if not isinstance(y, Tensor) or y.ndim < 1:
            raise ValueError("y must be a tensor [B, ...] (one measurement per sample)")
        if isinstance(op, LinearOperator):
            if tuple(y.shape[1:]) != op.out_shape:
                raise ValueError(
                    f"y has shape {list(y.shape[1:])} per sample but the operator measures "
                    f"{list(op.out_shape)}"
                )
        elif noise_std == 0:
            raise ValueError(
                "a callable (nonlinear) operator needs noise_std > 0: its likelihood has no "
                "noise-free Gaussian form"
            )

    @property
    def linear(self) -> bool:
        """Whether A is a :class:`LinearOperator` (with its SVD)."""
        return isinstance(self.operator, LinearOperator)

    def linear_operator(self, method: str, uses: str = "A's SVD") -> LinearOperator:
        """A, or a ValueError saying ``method`` needs a LinearOperator (for what it ``uses``)."""
        if not isinstance(self.operator, LinearOperator):
            raise ValueError(
                f"{method} needs a LinearOperator (it uses {uses}); got "
                f"{type(self.operator).__name__}. For a nonlinear A use dps or smc"
            )
        return self.operator

    def check(self, x: Tensor, groups: int | None = None) -> None:
        """A ValueError naming the problem unless the start x [B, ...] goes with the measurement:
        one row of y per sample (per group of particles when ``groups`` is given) and, for a
        LinearOperator, x's sample shape its input shape."""
        if not isinstance(x, Tensor) or x.ndim < 1:
            raise ValueError("x must be a tensor [B, ...] (noise times sigmas[0])")
        want, what = (len(x), "samples") if groups is None else (groups, "groups of particles")
        if len(self.y) != want:
            raise ValueError(f"got {len(self.y)} measurements y for {want} {what}")
        if isinstance(self.operator, LinearOperator) and tuple(x.shape[1:]) != (
            self.operator.in_shape
        ):
            raise ValueError(
                f"x has sample shape {list(x.shape[1:])} but the operator takes "
                f"{list(self.operator.in_shape)}"
            )


def takes_measurement(method: Method) -> Method:
    """``method(denoiser, measurement, ...)`` that also accepts the spelling from before
    :class:`Measurement`, ``method(denoiser, operator, y, noise_std, ...)``: the three arguments
    become one Measurement, with a DeprecationWarning (the one place that form is kept)."""

    @functools.wraps(method)
    def call(denoiser: Callable[..., Tensor], *args: Any, **kwargs: Any) -> Any:
        if args and not isinstance(args[0], Measurement):
            if len(args) < 3:
                raise TypeError(
                    f"{method.__name__} takes (denoiser, measurement, ...) with a "
                    f"Measurement(operator, y, noise_std), got {type(args[0]).__name__}"
                )
            warnings.warn(
                f"{method.__name__}(denoiser, operator, y, noise_std, ...) is deprecated: pass "
                "Measurement(operator, y, noise_std) as the second argument",
                DeprecationWarning,
                stacklevel=2,
            )
            operator, y, noise_std, *args = args  # type: ignore[assignment]
            args = (Measurement(operator, y, noise_std), *args)
        return method(denoiser, *args, **kwargs)

    return call  # type: ignore[return-value]
