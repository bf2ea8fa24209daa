"""What every feature cache shares: a refresh plan (which calls are full evaluations), the reset
between sampling runs, the position features are forecast over, and counts of the work done.

A cache wraps a network ``net(x_t, time, labels=None)`` into a module with the same signature, so it
goes inside any difflab denoiser (:func:`difflab.acceleration.with_network`) and every sampler,
guidance method and metric sees a plain denoiser. Call k of a sampling run (k = 0 .. NFE - 1) is a
full evaluation where ``refresh[k]`` is True; elsewhere the cache may reuse or forecast stored
features. After ``len(refresh)`` calls the cache resets itself, so each sampling run that makes
exactly that many calls (``sampling.info(name).nfe(steps)``; a batched :meth:`Model.generate`
makes one run per batch) starts from an empty cache; :meth:`StepCache.reset` starts one by hand.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from difflab.acceleration.features import FeatureCache
from difflab.core.tensors import check_name

__all__ = ["VARIABLES", "StepCache", "power_refresh", "swapped", "uniform_refresh"]

VARIABLES = ("time", "step")


def uniform_refresh(nfe: int, interval: int) -> tuple[bool, ...]:
    """Full evaluations at calls 0, N, 2N, ... of an NFE-call run (DeepCache's uniform 1:N
    strategy, Ma et al. 2024); interval 1 is every call (no caching)."""
    _check_count(nfe, "nfe")
    _check_count(interval, "interval")
    return tuple(k % interval == 0 for k in range(nfe))


def power_refresh(
    nfe: int, full: int, center: float | None = None, power: float = 2.0
) -> tuple[bool, ...]:
    """``full`` full evaluations placed densest around call ``center`` (default the middle):
    k_i = c + sign(u_i) |u_i|^p for u_i evenly spaced on [-c^(1/p), (nfe - 1 - c)^(1/p)], rounded,
    plus call 0 (DeepCache's non-uniform strategy, Ma et al. 2024, Sec. 3.3). Rounding can merge
    neighbours, so a run may get fewer than ``full``; p = 1 is an even spread."""
    _check_count(nfe, "nfe")
    _check_count(full, "full")
    if full > nfe:
        raise ValueError(f"full evaluations ({full}) cannot exceed the run's NFE ({nfe})")
    c = (nfe - 1) / 2 if center is None else float(center)
    if not (0 <= c <= nfe - 1 and math.isfinite(power) and power >= 1):
        raise ValueError(f"need 0 <= center <= nfe - 1 and power >= 1, got {center}, {power}")
    u = torch.linspace(-(c ** (1 / power)), (nfe - 1 - c) ** (1 / power), full, dtype=torch.float64)
    calls = (c + u.sign() * u.abs() ** power).round().long().clamp(0, nfe - 1)
    chosen = {0, *calls.tolist()}
    return tuple(k in chosen for k in range(nfe))


def _check_count(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {value!r}")


@contextmanager
def swapped(net: nn.Module, **modules: nn.Module) -> Iterator[None]:
    """Within the block, ``net``'s named submodules are replaced (the network's own forward runs
    on the replacements); the originals are put back after, also on error."""
    old = {name: net._modules[name] for name in modules}
    try:
        net._modules.update(modules)
        yield
    finally:
        net._modules.update(old)


class StepCache(nn.Module):
    """Base of the caches: ``forward(x, time, labels)`` runs call k of the refresh plan ``refresh``
    (one boolean per denoiser call of a run, True where the call is a full evaluation).

    ``forecast`` is the order of the Newton forecast of cached features (0: reuse them as they
    are); ``variable`` the position they are forecast over: "time", the network's own time input
    (log(sigma) / 4 for EDM, t for VP and flow processes), or "step", the call index.
    Counters: ``calls``, and ``evaluations``, the full network evaluations they cost (a call where
    only some samples ran the full network counts that fraction).
    """

    def __init__(
        self, net: nn.Module, refresh: Sequence[bool], forecast: int = 0, variable: str = "time"
    ) -> None:
        super().__init__()
        refresh = tuple(refresh)
        if not refresh or not all(isinstance(s, bool) for s in refresh) or not refresh[0]:
            raise ValueError(
                "a refresh plan is a non-empty sequence of booleans, one per denoiser call, "
                "starting with True (the first call of a run must be a full evaluation)"
            )
        check_name("forecast variable", variable, VARIABLES)
        self.net, self.refresh, self.variable = net, refresh, variable
        self.features = FeatureCache(forecast)
        self.calls, self.evaluations, self.step = 0, 0.0, 0

    @property
    def forecast(self) -> int:
        """The forecast order (0: cached features are reused as they are)."""
        return self.features.order

    def reset(self) -> None:
        """Start a new sampling run: the next call is call 0 of the refresh plan."""
        self.step = 0
        self.features.clear()

    def reset_counts(self) -> None:
        """Zero ``calls`` and ``evaluations``."""
        self.calls, self.evaluations = 0, 0.0

    def _begin(self, x: Tensor, time: Tensor) -> tuple[bool, Tensor]:
        """(whether this call is a full evaluation, the position of each sample [B] in float64)."""
        if self.step == len(self.refresh):
            self.reset()
        if self.step == 0:
            self.features.clear()
        elif self.features.batch != x.shape[0]:
            raise ValueError(
                f"the cache holds features of {self.features.batch} samples but call "
                f"{self.step} of the run got {x.shape[0]}: a sampling run must make exactly "
                f"{len(self.refresh)} denoiser calls (the refresh plan's length), or call reset() "
                "between runs"
            )
        full = self.refresh[self.step]
        if self.variable == "step":
            t = torch.full((x.shape[0],), float(self.step), dtype=torch.float64, device=x.device)
        else:
            t = torch.as_tensor(time, device=x.device).to(torch.float64).expand(x.shape[0])
        self.step += 1
        self.calls += 1
        return full, t
