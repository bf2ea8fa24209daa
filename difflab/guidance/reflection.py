"""Weak-to-Strong Diffusion (W2SD; Bai, Sugiyama & Xie 2025, "Weak-to-Strong Diffusion with
Reflection", arXiv 2502.00473): before chosen sampler steps, the state is *reflected*: denoised by a
strong model from sigma down to sigma' and inverted by a weak one from sigma' back up to sigma,

    x~ = DDIM_weak^-1(DDIM_strong(x; sigma -> sigma'); sigma' -> sigma)
       = x + delta (eps_weak(x', sigma') - eps_strong(x, sigma)),             delta = sigma - sigma'
       = x + (delta / sigma) (D_strong(x, sigma) - D_weak(x, sigma)) + O(delta^2)
       = x + delta sigma grad_x log(p_strong / p_weak)(x) + O(delta^2),

a gradient step on the log density ratio: x moves to where the strong model puts more mass than the
weak one (the paper's Theorem: the weak-to-strong difference stands in for the unknown
strong-to-ideal one). The same ratio drives autoguidance (:func:`autoguidance`), which changes the
denoiser instead: a reflection of depth delta = d h before an Euler step of size h gives
x - h [eps_s + d (eps_s - eps_w)] + O(h^2), the Euler step of autoguidance with w = 1 + d, so
reflecting every step converges to autoguidance's flow as the grid refines (tested), at 3 network
evaluations per step instead of 2; reflecting the first lambda steps only is, to that order,
autoguidance on the high noise levels alone.

A reflection is not a denoiser transformation, so :class:`W2SD` is a *sampler*: it runs any
registered sampler between reflections, each stretch of the grid as one call (a multistep sampler's
history and a grid-dependent choice such as restart's level start again after each reflection).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from difflab import sampling
from difflab.core.tensors import as_tensor
from difflab.guidance.guided import Denoiser, check_interval
from difflab.sampling.steps import ddim_step

__all__ = ["W2SD", "reflect"]


def reflect(
    strong: Denoiser,
    weak: Denoiser,
    x: Tensor,
    sigma: float,
    sigma_next: float,
    **cond: Any,
) -> Tensor:
    """x~ = DDIM_weak^-1(DDIM_strong(x)): the DDIM step x' = D_s + (s'/s)(x - D_s) of the strong
    model from ``sigma`` down to ``sigma_next``, then the DDIM inversion step of the weak model
    x~ = D_w(x', s') + (s/s')(x' - D_w(x', s')) back up (Bai et al. 2025, the reflection operator).
    Two evaluations, each with ``cond``."""
    if not 0 < sigma_next < sigma < math.inf:
        raise ValueError(
            f"a reflection needs 0 < sigma_next < sigma < inf, got sigma = {sigma:g}, "
            f"sigma_next = {sigma_next:g}"
        )
    b = x.shape[0]
    s = torch.full((b,), sigma, dtype=x.dtype, device=x.device)
    down = ddim_step(x, strong(x, s, **cond), sigma, sigma_next)
    s_next = torch.full((b,), sigma_next, dtype=x.dtype, device=x.device)
    return ddim_step(down, weak(down, s_next, **cond), sigma_next, sigma)


@dataclass(frozen=True)
class W2SD:
    """A sampler ``W2SD(weak, sampler)(denoiser, x, sigmas, *, generator, callback, cond)``: the
    registered ``sampler`` (with ``options``) on ``sigmas``, and before each reflected step i the
    state is replaced by :func:`reflect` (``strong``, ``weak``, x, sigma_i, sigma'_i) with
    sigma'_i = sigma_i - ``depth`` (sigma_i - sigma_{i+1}) (depth 1: the next grid level, as in
    the paper). ``strong`` None is the sampled denoiser itself.

    Reflected steps: the first ``steps`` (the paper's lambda; None: all) whose sigma_i is finite,
    inside ``sigma_interval`` when given, and whose sigma'_i > 0 (never the step into 0 at depth 1:
    the released code reflects every step but the last). Each reflection costs one strong and one
    weak evaluation (:meth:`nfe`). The reflection is deterministic, so the samples are as
    batch-invariant as the inner sampler (per-sample generators pass through)."""

    weak: Denoiser = field(repr=False)
    sampler: str = "euler"
    strong: Denoiser | None = field(default=None, repr=False)
    steps: int | None = None
    sigma_interval: tuple[float, float] | None = None
    depth: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not callable(self.weak) or (self.strong is not None and not callable(self.strong)):
            raise ValueError("W2SD needs denoisers: weak (and strong, if given) must be callable")
        if sampling.info(self.sampler).adaptive:  # also names an unknown sampler
            raise ValueError(
                f"W2SD runs its sampler on fixed stretches of the grid; {self.sampler} chooses "
                "its own steps (use a fixed-step sampler)"
            )
        steps = self.steps
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, int) or steps < 0
        ):
            raise ValueError(f"W2SD steps must be an integer >= 0 (or None: all), got {steps!r}")
        object.__setattr__(self, "sigma_interval", check_interval(self.sigma_interval))
        if not (isinstance(self.depth, int | float) and 0 < self.depth <= 1):
            raise ValueError(
                f"W2SD depth must be in (0, 1] (the fraction of a grid step), got {self.depth!r}"
            )
        if not isinstance(self.options, dict):
            raise ValueError("W2SD options must be a dict of the inner sampler's options")

    def __str__(self) -> str:
        return f"w2sd({self.sampler})"

    def reflected(self, sigmas: Tensor | Sequence[float]) -> list[tuple[int, float, float]]:
        """(i, sigma_i, sigma'_i) for every reflected step of the grid ``sigmas``."""
        s = as_tensor(sigmas, torch.float64).detach().cpu().flatten().tolist()
        count = len(s) - 1 if self.steps is None else min(self.steps, len(s) - 1)
        lo, hi = self.sigma_interval or (0.0, math.inf)
        out = []
        for i in range(count):
            down = s[i] - self.depth * (s[i] - s[i + 1])
            if math.isfinite(s[i]) and lo <= s[i] <= hi and down > 0:
                out.append((i, s[i], down))
        return out

    def _segments(self, n: int, reflected: list[int]) -> list[tuple[int, int]]:
        """The stretches [a, b] of grid indices run by one call of the inner sampler."""
        cuts = sorted({0, *reflected, n})
        return list(itertools.pairwise(cuts))

    def nfe(self, sigmas: Tensor | Sequence[float]) -> int:
        """Network evaluations per sample on ``sigmas``: the inner sampler's on each stretch (one
        that ends above 0 is a grid of one more interval without its final one-evaluation step)
        plus 2 per reflection (strong and weak; the sampled denoiser's own calls are this less
        one per reflection when ``strong`` is None)."""
        s = as_tensor(sigmas, torch.float64).detach().cpu().flatten().tolist()
        info = sampling.info(self.sampler)
        reflected = [i for i, _, _ in self.reflected(s)]
        total = 2 * len(reflected)
        for a, b in self._segments(len(s) - 1, reflected):
            closed = s[b] == 0
            m = b - a if closed else b - a + 1
            total += info.nfe(m, math.isinf(s[a]), **self.options) - (0 if closed else 1)
        return total

    def __call__(
        self,
        denoiser: Denoiser,
        x: Tensor,
        sigmas: Tensor | Sequence[float],
        *,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        callback: Callable[[int, float, Tensor, Tensor], None] | None = None,
        cond: dict[str, Any] | None = None,
    ) -> Tensor:
        run = sampling.get(self.sampler)
        grid = as_tensor(sigmas, torch.float64).detach().cpu().flatten()
        reflections = self.reflected(grid)
        at = {i: (s, down) for i, s, down in reflections}
        strong = self.strong if self.strong is not None else denoiser
        cond = cond or {}
        for a, b in self._segments(len(grid) - 1, list(at)):
            if a in at:
                x = reflect(strong, self.weak, x, *at[a], **cond)
            shifted = None
            if callback is not None:
                shifted = lambda i, s, xi, d, a=a: callback(a + i, s, xi, d)  # noqa: E731
            x = run(
                denoiser,
                x,
                grid[a : b + 1],
                generator=generator,
                callback=shifted,
                cond=cond,
                **self.options,
            )
        return x
