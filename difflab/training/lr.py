"""Learning-rate schedules as pure functions of the step, so a resumed run needs no scheduler state."""

from __future__ import annotations

import math
from dataclasses import dataclass

from difflab.core.tensors import check_name

__all__ = ["LR_SCHEDULES", "LRSchedule"]

LR_SCHEDULES = ("constant", "cosine", "inverse_sqrt")


@dataclass(frozen=True)
class LRSchedule:
    """lr(n) = lr * f(n): linear warm-up over ``warmup`` steps, then constant, cosine decay to
    ``min_factor`` at ``total`` steps (Loshchilov & Hutter 2017), or 1/sqrt(n / ref) (EDM2, Karras et al. 2024)."""

    kind: str = "constant"
    warmup: int = 0
    total: int = 1
    min_factor: float = 0.0
    ref: int = 1

    def __post_init__(self) -> None:
        check_name("learning-rate schedule", self.kind, LR_SCHEDULES)
        if self.warmup < 0 or self.total < 1 or self.ref < 1:
            raise ValueError(
                f"learning-rate schedule needs warmup >= 0, total >= 1 and ref >= 1, "
                f"got warmup={self.warmup}, total={self.total}, ref={self.ref}"
            )

    def __call__(self, step: int) -> float:
        """The factor applied to the base learning rate at optimizer step ``step`` (0-based)."""
        n = step + 1
        warm = min(1.0, n / self.warmup) if self.warmup else 1.0
        if self.kind == "constant":
            return warm
        if self.kind == "inverse_sqrt":
            return warm / math.sqrt(max(n / self.ref, 1.0))
        span = max(self.total - self.warmup, 1)
        progress = min(max(n - self.warmup, 0) / span, 1.0)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return warm * (self.min_factor + (1 - self.min_factor) * cosine)
