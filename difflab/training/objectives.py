"""The denoising objective E_{sigma, x0, eps} lambda(sigma) ||D(x0 + sigma eps, sigma) - x0||^2
(Kingma & Gao 2023), computed on the network's own output.

A network of any prediction type sees x_t = alpha x0 + sigma_t eps through the difflab wrapper
(:class:`~difflab.core.parameterization.Denoiser` or :class:`~difflab.core.parameterization.EDMPrecond`).
At a fixed input its x0 estimate is affine in its output, out - target = g (x0_hat - x0), so

    lambda ||x0_hat - x0||^2 = (lambda / g^2) ||out - target||^2,

g^2 being the prediction's native weight (eps: SNR; x0: 1; v on VP: SNR + 1; EDM's F: the EDM weight).
The right-hand side is what is computed: subtracting x0 from x0_hat would lose the error to
cancellation at small sigma.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from difflab.core import parameterization as pz
from difflab.core import processes
from difflab.core.parameterization import (
    Denoiser,
    EDMPrecond,
    Parameterization,
    Wrapper,
    network_output,
    output_slopes,
)
from difflab.core.processes import Process
from difflab.core.tensors import (
    as_tensor,
    broadcast_sigma,
    check_name,
    check_nonnegative,
)
from difflab.training.noise_levels import NoiseLevels
from difflab.training.weighting import Weighting

__all__ = [
    "PREDICTIONS",
    "Draw",
    "Objective",
    "denoising_loss",
    "drop_context",
    "drop_labels",
    "immiscible_assignment",
    "network_output",
    "output_slopes",
]

PREDICTIONS = pz.PARAMETERIZATIONS


def denoising_loss(
    denoiser: Wrapper,
    x0: Tensor,
    eps: Tensor,
    sigma: Tensor,
    weighting: Weighting | str = "uniform",
    where: Tensor | None = None,
    **cond: Any,
) -> Tensor:
    """Per-sample losses [B]: mean over elements of (lambda / g^2)(sigma) (out - target)^2, which is
    lambda(sigma) ||D(x0 + sigma eps, sigma) - x0||^2 / n_elements (Kingma & Gao 2023, eq. 1); with
    ``where`` (bool, broadcasting to x0) the mean over the elements it marks only (CSDI's loss on
    the target entries, Tashiro et al. 2021; 0 for a sample with none).

    ``sigma`` is sigma_ve: a scalar, one per sample [B], or any shape that broadcasts against x0 from
    the left (one noise level per frame, token or element). x0 and eps are fixed inputs, so tests and
    callers can hold the noise draws fixed. Where the weight is infinite (x0 at sigma = 0 under an
    SNR-type weight; eps or score at sigma = inf under a weight that stays positive there) the loss
    is inf or NaN: :class:`Objective` rejects configurations whose noise levels reach such a point.
    """
    if x0.ndim < 1 or eps.shape != x0.shape:
        raise ValueError(
            f"x0 and eps must have the same shape [B, ...], got {tuple(x0.shape)} and "
            f"{tuple(eps.shape)}"
        )
    if isinstance(weighting, str):
        weighting = Weighting(weighting)
    sigma = check_nonnegative(as_tensor(sigma).to(x0.device))
    out, target = network_output(denoiser, x0, eps, sigma, **cond)
    if out.shape != x0.shape:
        raise ValueError(
            f"the network returned shape {tuple(out.shape)} for input of shape {tuple(x0.shape)}"
        )
    g, h = output_slopes(denoiser, sigma, x0)
    s = broadcast_sigma(sigma.to(torch.float64), x0)
    error = out - target
    weight = weighting.output_weight(s, g, h).to(error.dtype)
    loss = (weight * error.square()).reshape(x0.shape[0], -1)
    if where is None:
        return loss.mean(1)
    scored = where.to(loss.device, torch.bool).expand(x0.shape).reshape(x0.shape[0], -1)
    return torch.where(scored, loss, 0.0).sum(1) / scored.sum(1).clamp_min(1)


def drop_context(context: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Each sample's context replaced by the null context (a row of NaN, which difflab networks
    replace by their learned null) with probability p: classifier-free guidance on a context (Ho &
    Salimans 2022)."""
    if not 0 <= p <= 1:
        raise ValueError(f"context dropout must be a probability in [0, 1], got {p}")
    device = generator.device if generator is not None else context.device
    u = torch.rand(context.shape[:1], generator=generator, dtype=torch.float64, device=device)
    drop = (u.to(context.device) < p).reshape(-1, *([1] * (context.ndim - 1)))
    return torch.where(drop, math.nan, context)


def drop_labels(labels: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Each label replaced by -1 (the null class) with probability p: classifier-free guidance
    training (Ho & Salimans 2022)."""
    if not 0 <= p <= 1:
        raise ValueError(f"label dropout must be a probability in [0, 1], got {p}")
    device = generator.device if generator is not None else labels.device
    u = torch.rand(labels.shape, generator=generator, dtype=torch.float64, device=device)
    return torch.where(u.to(labels.device) < p, -1, labels)


def immiscible_assignment(x0: Tensor, eps: Tensor) -> Tensor:
    """The permutation pi minimizing sum_i ||x0_i - eps_pi(i)||^2 over the batch, so eps[pi] is the
    noise assigned to x0 (Li et al. 2024, immiscible diffusion; a linear assignment problem)."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        raise ImportError(
            "immiscible diffusion needs scipy: pip install 'difflab[schedules]'"
        ) from None
    if eps.shape != x0.shape:
        raise ValueError(
            f"x0 and eps must have the same shape, got {tuple(x0.shape)} and {tuple(eps.shape)}"
        )
    a = x0.detach().reshape(x0.shape[0], -1).to(torch.float64)
    b = eps.detach().reshape(eps.shape[0], -1).to(torch.float64)
    cost = torch.cdist(a, b).square()
    _, cols = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(cols, dtype=torch.long, device=eps.device)


class Draw(NamedTuple):
    """One batch's random draws: noise levels sigma_ve [B], unit noise like x0, (dropped) labels and
    (dropped) context."""

    sigma: Tensor
    eps: Tensor
    labels: Tensor | None
    context: Tensor | None = None


class Objective:
    """A training objective: prediction type, loss weighting, noise-level distribution, label and
    context dropout and immiscible noise assignment, in the sigma_ve convention of DESIGN.md.

    ``Objective(process, prediction="v", weighting="min_snr", noise_levels="uniform_t", gamma=5)``;
    ``options`` are the weighting's (``gamma``, ``sigma_data``), the noise levels' (``t_min``,
    ``t_max``, ``p_mean``, ``p_std``, ``logit_mean``, ``logit_std``) and, for prediction "edm", the
    preconditioning's ``sigma_data``. ``objective.denoiser(net)`` is the matching difflab denoiser, so
    sampling uses exactly the training parameterization.
    """

    def __init__(
        self,
        process: Process | str,
        prediction: str = "eps",
        weighting: str = "uniform",
        noise_levels: str = "uniform_t",
        label_dropout: float = 0.0,
        immiscible: bool = False,
        time_input: str = "t",
        stratified: bool = False,
        context_dropout: float = 0.0,
        **options: Any,
    ) -> None:
        check_name("prediction type", prediction, PREDICTIONS)
        for name, p in (("label_dropout", label_dropout), ("context_dropout", context_dropout)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        weighting_options = Weighting.options_of(weighting)
        level_options = NoiseLevels.options_of(noise_levels)
        precond_options = {"sigma_data": 0.5} if prediction == "edm" else {}
        valid = {**weighting_options, **level_options, **precond_options}
        for key in options:
            if key not in valid:
                raise ValueError(
                    f"option {key!r} does not apply to prediction {prediction!r}, weighting "
                    f"{weighting!r} and noise levels {noise_levels!r}; valid options: "
                    f"{', '.join(valid) or 'none'}"
                )
        self.parameterization = Parameterization(
            process,
            prediction,
            time_input,
            options.get("sigma_data") if prediction == "edm" else None,
        )
        self.process = self.parameterization.process
        self.prediction, self.time_input = prediction, time_input
        self.label_dropout, self.immiscible = float(label_dropout), bool(immiscible)
        self.context_dropout = float(context_dropout)
        self.weighting = Weighting(
            weighting, **{k: v for k, v in options.items() if k in weighting_options}
        )
        self.noise_levels = NoiseLevels(
            noise_levels,
            self.process,
            stratified,
            **{k: v for k, v in options.items() if k in level_options},
        )
        self.sigma_data = self.parameterization.sigma_data
        self._check_weight_bounded()

    def _check_weight_bounded(self) -> None:
        """The loss weight must be finite at the extreme noise levels the distribution can draw."""
        u = torch.tensor([0.0, 1 - 2.0**-53], dtype=torch.float64)  # torch.rand's extremes
        sigma = self.noise_levels.sample_of(u)
        like = torch.zeros(2, 1, dtype=torch.float64)
        weight = self.weighting.output_weight(
            sigma[:, None], *self.parameterization.output_slopes(sigma, like)
        )
        for s, w in zip(sigma.tolist(), weight.flatten().tolist()):
            if not math.isfinite(w):
                raise ValueError(
                    f"the {self.weighting.name!r} weighting is infinite on a {self.prediction!r} "
                    f"output at sigma = {s}, which noise levels {self.noise_levels.name!r} reach, so "
                    "the loss would be inf or NaN there: pick another prediction type, weighting "
                    "or noise-level range"
                )

    def denoiser(self, net: nn.Module | Callable[..., Tensor]) -> Wrapper:
        """The difflab denoiser D(x, sigma) around ``net(x_t, time, **cond)`` for this objective."""
        return self.parameterization.denoiser(net)

    def draw(
        self,
        x0: Tensor,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        context: Tensor | None = None,
    ) -> Draw:
        """sigma ~ the noise levels, eps ~ N(0, I) (assigned to x0 when immiscible), labels dropped
        with probability label_dropout, the context with probability context_dropout; drawn in this
        order from ``generator``."""
        if x0.ndim < 1:
            raise ValueError("x0 must have a batch dimension [B, ...]")
        device = generator.device if generator is not None else x0.device
        sigma = self.noise_levels(x0.shape[0], generator, device).to(x0.device)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=device)
        eps = eps.to(x0.device)
        if self.immiscible:
            eps = eps[immiscible_assignment(x0, eps)]
        if labels is not None and self.label_dropout > 0:
            labels = drop_labels(labels, self.label_dropout, generator)
        if context is not None and self.context_dropout > 0:
            context = drop_context(context, self.context_dropout, generator)
        return Draw(sigma, eps, labels, context)

    def loss(
        self,
        net: nn.Module | Callable[..., Tensor],
        x0: Tensor,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        **cond: Any,
    ) -> tuple[Tensor, Tensor]:
        """(mean loss, per-sample losses [B]) for one batch; ``net`` is a raw network (wrapped by
        :meth:`denoiser`) or a difflab Denoiser / EDMPrecond used as it is. Labels go to the network
        as ``labels=`` and a ``context`` keyword as ``context=`` (after dropout); other keyword
        arguments pass through."""
        den = net if isinstance(net, (Denoiser, EDMPrecond)) else self.denoiser(net)
        draw = self.draw(x0, labels, generator, cond.pop("context", None))
        if draw.labels is not None:
            cond = {**cond, "labels": draw.labels}
        if draw.context is not None:
            cond = {**cond, "context": draw.context}
        per_sample = denoising_loss(den, x0, draw.eps, draw.sigma, self.weighting, **cond)
        return per_sample.mean(), per_sample

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able description; ``Objective.from_config(o.config)`` rebuilds it."""
        options = {**self.weighting.options, **self.noise_levels.options}
        if self.prediction == "edm":
            options["sigma_data"] = self.sigma_data
        return {
            "process": self.process.config(),
            "prediction": self.prediction,
            "weighting": self.weighting.name,
            "noise_levels": self.noise_levels.name,
            "label_dropout": self.label_dropout,
            "context_dropout": self.context_dropout,
            "immiscible": self.immiscible,
            "time_input": self.time_input,
            "stratified": self.noise_levels.stratified,
            **options,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Objective:
        """Inverse of :attr:`config`."""
        config = dict(config)
        if "process" not in config:
            raise ValueError("objective config has no 'process'")
        return cls(processes.from_config(config.pop("process")), **config)

    def __repr__(self) -> str:
        return (
            f"Objective({self.process!r}, prediction={self.prediction!r}, "
            f"weighting={self.weighting!r}, noise_levels={self.noise_levels!r}, "
            f"label_dropout={self.label_dropout}, immiscible={self.immiscible})"
        )
