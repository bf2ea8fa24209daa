"""What a denoiser is conditioned on besides x and sigma, in the one convention
``denoiser(x, sigma, **cond)`` (DESIGN.md): the null value of each condition (classifier-free
guidance) and given entries of x0 (inpainting-style conditioning).

The condition keys every difflab network understands (:mod:`difflab.models`):

    labels   [B] integers              class labels
    context  [B, Dc] or [B, Tc, Dc]     a vector (observation, goal) or a sequence (observation
                                        history, a context window), floats
    mask     like x (or broadcasting)   1 where the entry of x0 is given, 0 where it is generated
    given    like x                     the given values (read where mask is 1)

Null values (Ho & Salimans 2022). Classifier-free guidance evaluates one network with and without a
condition, sample by sample, so each condition has a value that means "no condition": class label
-1 (the null class) and, for a float condition, a sample whose whole row is NaN (the network puts its
learned null context there). :func:`null_like` makes them; :func:`null_rows` finds them.

Given entries (CSDI, Tashiro et al. 2021; the inpainting conditioning of Diffuser, Janner et al.
2022, and Diffusion Policy, Chi et al. 2023). When the entries m of x0 are known, x0[m] = g, the
posterior mean there is g itself: E[x0_i | x, x0[m] = g] = g_i for i in m, exactly. So with any
estimate D_net of the other entries (a network that sees [x, m g, m]; an exact model),

    D(x, sigma) = m g + (1 - m) D_net(x, sigma)                                   (:func:`keep_given`)

is the denoiser of the conditional problem, and every sampler and guidance method runs on it
unchanged. Given entries carry noise level 0 (DESIGN.md's per-element sigma: sigma_i = 0 for i in
m): along the probability-flow ODE dx/dsigma = (x - D) / sigma they stay where they start, so a
sampler started from x_T = m g + (1 - m) sigma_max eps (:func:`impose_given`) keeps them at g at every
step (x - D = 0 there, and every sampler is exact on a constant denoiser): the sample's given entries
are g up to float rounding, whatever the sampler's steps. A start with noise on the given entries
converges to g only as sigma -> 0 (exactly with a final step x(0) = D, up to O(sigma_min) with the
"tau" final step), and a stochastic sampler puts its fresh noise on them too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from difflab.core.tensors import _check

__all__ = ["NULL_LABEL", "check_given", "impose_given", "keep_given", "null_like", "null_rows"]

NULL_LABEL = -1


def null_like(value: Tensor, null_label: int = NULL_LABEL) -> Tensor:
    """The null condition for every sample of ``value``: ``null_label`` for integer labels, NaN
    rows for float conditions (Ho & Salimans 2022)."""
    if not isinstance(value, Tensor):
        raise ValueError(f"a condition must be a tensor to have a null value, got {type(value)}")
    if value.dtype.is_floating_point:
        return torch.full_like(value, math.nan)
    return torch.full_like(value, null_label)


def null_rows(value: Tensor, key: str = "context") -> Tensor:
    """[B] bool: the samples whose condition is null (every element NaN); a sample with some but
    not all elements NaN is a ValueError naming ``key``."""
    nan = torch.isnan(value).reshape(value.shape[0], -1)
    rows = nan.all(1)
    _check(rows | ~nan.any(1), f"{key}: a sample is either all NaN (the null {key}) or has no NaN")
    return rows


def check_given(x: Tensor, mask: Tensor | None, given: Tensor | None) -> tuple[Tensor, Tensor]:
    """(mask as bool broadcast to x's shape, given) after checking that both are present, that the
    mask holds 0 / 1 and broadcasts against x, and that given has x's shape."""
    if mask is None or given is None:
        missing = "given" if given is None else "mask"
        raise ValueError(f"mask and given go together: {missing} is missing")
    try:
        m = torch.as_tensor(mask, device=x.device).expand(x.shape)
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to x of shape {tuple(x.shape)}"
        ) from None
    if given.shape != x.shape:
        raise ValueError(f"given must have x's shape {tuple(x.shape)}, got {tuple(given.shape)}")
    if m.dtype != torch.bool:
        _check((m == 0) | (m == 1), "mask must hold 0 (generated) or 1 (given)")
        m = m != 0
    return m, given


def impose_given(x: Tensor, mask: Tensor, given: Tensor) -> Tensor:
    """m g + (1 - m) x: x with its given entries replaced by their values (exact, by selection)."""
    m, g = check_given(x, mask, given)
    return torch.where(m, g.to(x.dtype), x)


def keep_given(denoiser: Callable[..., Tensor], pass_given: bool = True) -> Callable[..., Tensor]:
    """D(x, sigma, mask, given, **cond) = m g + (1 - m) D_net(x, sigma, **cond): the posterior mean
    is the given value itself on given entries (module docstring; Tashiro et al. 2021, CSDI).

    ``pass_given``: D_net also receives ``mask`` and ``given`` (a network conditioned on them);
    False for a denoiser that takes neither (an unconditional model, the replacement method). Without
    mask and given the denoiser runs as it is."""

    def denoise(
        x: Tensor,
        sigma: Tensor | float,
        mask: Tensor | None = None,
        given: Tensor | None = None,
        **cond: Any,
    ) -> Tensor:
        if mask is None and given is None:
            return denoiser(x, sigma, **cond)
        check_given(x, mask, given)
        extra = {"mask": mask, "given": given} if pass_given else {}
        return impose_given(denoiser(x, sigma, **cond, **extra), mask, given)

    return denoise
