"""Algebraically reversible integrators: each sampling step can be solved for its input in closed
form, so inversion followed by sampling is the identity up to float rounding, for any denoiser.

Both carry two states, which together are the latent: EDICT two coupled sequences, BDIA the states
at two consecutive levels. Written in x = x0 + sigma eps coordinates, where a DDIM step is
x + (s' - s) eps; the papers mix VP states x_t = alpha_t x, which for BDIA's combination of states
at three levels differs from ours by O(h^2) per step (both are consistent; ours needs no process).
"""

from __future__ import annotations

import math

from torch import Tensor

from difflab.core.tensors import unknown_name
from difflab.inversion.base import Guide, Latent, Method, latent, register
from difflab.sampling.steps import ddim_step

__all__ = ["EDICT_LEVELS", "bdia", "edict"]


def _check_unit(value: float, name: str, low_open: bool, high_open: bool) -> None:
    ok = isinstance(value, int | float) and math.isfinite(value)
    ok = ok and (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    if not ok:
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")


# ------------------------------------------------------------------------------------- EDICT


EDICT_LEVELS = ("paper", "own")


def edict(
    guide: Guide, x: Tensor, sigmas: list[float], *, p: float = 0.93, level: str = "paper"
) -> Latent:
    """EDICT: x^ = x + c eps(y), y^ = y + c eps(x^), x' = p x^ + (1-p) y^, y' = p y^ + (1-p) x',
    c = s' - s, inverted in closed form (Wallace et al. 2023, Eqs. 11-18).

    Both sequences start at the input; the latent is the pair (x, y) at sigmas[0]. ``level``
    "paper" evaluates eps(x^) at the step's start level s, as the paper's eps(x^inter_t, t) does
    although x^inter_t is already at t - 1; "own" at x^'s own level s'. Both are exactly
    invertible. "own" is consistent, and on the exact mixtures its latent is ~10x closer to the
    true flow's at 10 steps (the paper's level shrinks the latent), but its y-update multiplies
    x^ - D(x^, s') by (s' - s)/s', large on long steps (7.4 on the last step of a 10-step Karras
    grid), which amplifies float32 rounding of a network's output; the paper's coefficient
    (s' - s)/s stays below 1 (docs/inversion.md measures both). The mixing contracts
    x - y by p^2 per sampling step, so inversion expands it by 1/p^2: past ~60 steps (p = 0.93)
    the latent drifts away from the flow's.
    """
    _check_unit(p, "p (the EDICT mixing weight)", low_open=True, high_open=False)
    if level not in EDICT_LEVELS:
        raise unknown_name("EDICT level", level, EDICT_LEVELS)
    grid = guide.grid(x, sigmas)
    y = x
    for i in reversed(range(grid.steps)):
        hi, c = sigmas[i], sigmas[i + 1] - sigmas[i]
        j = i + 1 if level == "own" else i
        y_mid = (y - (1 - p) * x) / p
        x_mid = (x - (1 - p) * y_mid) / p
        y = y_mid - (c / sigmas[j]) * (x_mid - grid.denoise(x_mid, j))
        x = x_mid - (c / hi) * (y - grid.denoise(y, i))
    return latent(x, partner=y, options={"p": p, "level": level})


def sample_edict(guide: Guide, z: Latent) -> Tensor:
    """EDICT's sampling steps from the pair (x, y); returns x."""
    sigmas, p, level = z.sigmas.tolist(), z.options["p"], z.options["level"]
    x, y = z.x, z.partner
    grid = guide.grid(x, sigmas)
    for i in range(grid.steps):
        hi, c = sigmas[i], sigmas[i + 1] - sigmas[i]
        j = i + 1 if level == "own" else i
        x_mid = x + (c / hi) * (y - grid.denoise(y, i))
        y_mid = y + (c / sigmas[j]) * (x_mid - grid.denoise(x_mid, j))
        x = p * x_mid + (1 - p) * y_mid
        y = p * y_mid + (1 - p) * x
    return x


# ------------------------------------------------------------------------------------- BDIA


def _bdia_weight(sigmas: list[float], i: int, gamma: float) -> float:
    """c_i of x_{i+1} = (1 - gamma) x_{i-1} + gamma x_i + c_i eps_i: the forward DDIM increment
    s_{i+1} - s_i plus the share (1 - gamma) of the backward one, -(s_{i-1} - s_i)."""
    return (sigmas[i + 1] - sigmas[i]) + (1 - gamma) * (sigmas[i] - sigmas[i - 1])


def bdia(guide: Guide, x: Tensor, sigmas: list[float], *, gamma: float = 0.5) -> Latent:
    """BDIA-DDIM: x_{i+1} = x_{i-1} - gamma (x_{i-1} - x_i) - (1 - gamma) Delta_{i-1} + Delta_{i+1},
    Delta_j = (s_j - s_i) eps(x_i, s_i) the DDIM increment from x_i to level j, solved for x_{i-1}
    (Zhang, Lewis & Kleijn 2023, with the authors' gamma: 0 the symmetric two-step, -> 1 DDIM).

    The inversion starts with one DDIM inversion step from the input (its error does not matter:
    the pair it makes is retraced exactly); the latent is the pair (x_0, x_1) at sigmas[0],
    sigmas[1]. The two-step recurrence has a parasitic root near -(1 - gamma) in sampling and
    hence -1/(1 - gamma) in inversion: gamma = 0 (the leapfrog rule, second order) inverts stably
    at any step count, but its sampling amplifies any inconsistency of the pair, so editing (a
    new condition) blows up; gamma > 0 damps sampling and grows the latent's parasitic part like
    (1 - gamma)^-steps, harmless to the round trip and to edits until rounding in it dominates
    (gamma = 0.5: up to ~30 steps in float64). docs/inversion.md measures the trade-off.
    """
    _check_unit(gamma, "gamma (the BDIA weight)", low_open=False, high_open=True)
    grid = guide.grid(x, sigmas)
    n = grid.steps
    lower, upper = x, ddim_step(x, grid.denoise(x, n), sigmas[n], sigmas[n - 1])
    for i in range(n - 1, 0, -1):  # (x_{i+1}, x_i) = (lower, upper) -> x_{i-1}
        eps = (upper - grid.denoise(upper, i)) / sigmas[i]
        prev = (lower - gamma * upper - _bdia_weight(sigmas, i, gamma) * eps) / (1 - gamma)
        lower, upper = upper, prev
    return latent(upper, partner=lower, options={"gamma": gamma})


def sample_bdia(guide: Guide, z: Latent) -> Tensor:
    """BDIA-DDIM's sampling steps from the pair (x_0, x_1); returns the state at sigmas[-1]."""
    sigmas, gamma = z.sigmas.tolist(), z.options["gamma"]
    prev, cur = z.x, z.partner
    grid = guide.grid(cur, sigmas)
    for i in range(1, grid.steps):
        eps = (cur - grid.denoise(cur, i)) / sigmas[i]
        prev, cur = cur, (1 - gamma) * prev + gamma * cur + _bdia_weight(sigmas, i, gamma) * eps
    return cur


register(
    Method(
        "edict",
        edict,
        sample_edict,
        exact="algebraic",
        cost="2 per step each way",
    )
)
register(
    Method(
        "bdia",
        bdia,
        sample_bdia,
        exact="algebraic",
        cost="1 per step each way (sampling from the pair: steps - 1)",
    )
)
