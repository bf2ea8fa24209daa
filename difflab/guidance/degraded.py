"""Guidance by a degraded version of the model itself: the negative branch is the same condition
evaluated by a weaker network (autoguidance) or by the network with its attention maps replaced by the
identity (perturbed-attention guidance). Any rule of :mod:`difflab.guidance.rules` combines them."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

from torch import Tensor, nn

from difflab.guidance.guided import Branches, Denoiser, guide
from difflab.guidance.rules import Rule

__all__ = ["autoguidance", "perturbed", "perturbed_attention"]


def autoguidance(
    good: Denoiser,
    weak: Denoiser,
    scale: float | Rule,
    sigma_interval: tuple[float, float] | None = None,
) -> Denoiser:
    """D_w = D_weak + w (D_good - D_weak), both with the same conditioning (Karras et al. 2024,
    "Guiding a Diffusion Model with a Bad Version of Itself"): the score of p_good^w p_weak^(1-w).
    The weak model should share the good one's task and conditioning but be smaller and/or trained
    shorter. With weak = good it is the identity."""

    def both(x: Tensor, sigma: Tensor | float, **cond: Any) -> tuple[Tensor, Tensor]:
        return good(x, sigma, **cond), weak(x, sigma, **cond)

    return guide(Branches(good, both), scale, sigma_interval)


def perturbed(
    denoiser: Denoiser,
    perturbation: Any,
    scale: float | Rule,
    sigma_interval: tuple[float, float] | None = None,
) -> Denoiser:
    """D_w = D_hat + w (D - D_hat), D_hat the denoiser evaluated inside the context manager
    ``perturbation()`` (a callable returning one), e.g. attention maps switched to the identity."""

    def both(x: Tensor, sigma: Tensor | float, **cond: Any) -> tuple[Tensor, Tensor]:
        d = denoiser(x, sigma, **cond)
        context: AbstractContextManager[Any] = perturbation()
        with context:
            return d, denoiser(x, sigma, **cond)

    return guide(Branches(denoiser, both), scale, sigma_interval)


def perturbed_attention(
    denoiser: Denoiser,
    scale: float | Rule,
    layers: Iterable[str] | None = None,
    network: nn.Module | None = None,
    sigma_interval: tuple[float, float] | None = None,
) -> Denoiser:
    """Perturbed-attention guidance (Ahn et al. 2024): D_w = D_hat + w (D - D_hat), D_hat with the
    identity attention map (each token attends to itself) in ``layers`` of ``network`` (default: every
    attention layer of the denoiser, which must then be an nn.Module, as difflab's UNet and DiT
    denoisers are). The paper's scale s is w - 1. Layer names are those of
    :func:`difflab.models.attention_layers` (network)."""
    from difflab.models.attention import attention_layers, identity_attention  # layer 3, lazily

    network = network if network is not None else denoiser
    if not isinstance(network, nn.Module):
        raise ValueError(
            "perturbed-attention guidance needs the network whose attention it switches: pass "
            "network= (an nn.Module) when the denoiser is a plain function"
        )
    available = attention_layers(network)
    if not available:
        raise ValueError(f"{type(network).__name__} has no attention layers to perturb")
    chosen = list(available) if layers is None else list(layers)
    with identity_attention(network, chosen):  # checks every name now, not at sampling time
        pass
    return perturbed(denoiser, lambda: identity_attention(network, chosen), scale, sigma_interval)
