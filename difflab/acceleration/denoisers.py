"""The same denoiser around another network: a cached, quantized or distilled stand-in for the
network a difflab wrapper was built around, with the wrapper's parameterization unchanged."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from difflab.core.parameterization import Denoiser, EDMPrecond

__all__ = ["with_network"]


def with_network(
    denoiser: Denoiser | EDMPrecond, net: nn.Module | Callable[..., Tensor]
) -> Denoiser | EDMPrecond:
    """A new wrapper of ``denoiser``'s kind and settings (process, prediction, time input, EDM's
    sigma_data) around ``net``; ``denoiser`` itself is left as it is."""
    if isinstance(denoiser, EDMPrecond):
        return EDMPrecond(net, sigma_data=denoiser.sigma_data)
    if isinstance(denoiser, Denoiser):
        return Denoiser(
            net, denoiser.process, denoiser.prediction, denoiser.time_input, denoiser.quantize
        )
    raise TypeError(
        f"expected a difflab Denoiser or EDMPrecond (a model's .denoiser), got "
        f"{type(denoiser).__name__}"
    )
