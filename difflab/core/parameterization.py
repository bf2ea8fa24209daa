"""Wrap any network, whatever it predicts and whatever process it was trained on, into the one
denoiser convention ``denoiser(x, sigma, **cond) -> E[x0 | x]`` with x = x0 + sigma * eps (DESIGN.md).

A network sees x_t = alpha x (the process's own scaling) and a time input; its output is converted to
x0 exactly. With x_t = alpha x0 + sigma eps (alpha, sigma the process coefficients):

    eps      : x0 = (x_t - sigma eps) / alpha
    x0       : x0 = out
    v        : x0 = (alpha x_t - sigma v) / (alpha^2 + sigma^2),   v = alpha eps - sigma x0  (Salimans & Ho 2022)
    score    : x0 = (x_t + sigma^2 score) / alpha,                 score = -eps / sigma
    velocity : x0 = (sigma' x_t - sigma u) / (alpha sigma' - alpha' sigma),  u = alpha' x0 + sigma' eps

At sigma_ve = inf (zero terminal SNR) the input x stands for the unit noise (the limit of x / sigma),
which is exactly the network input x_t there; v, x0 and velocity predictions stay exact, eps and score
predictions cannot recover x0 at zero SNR.

sigma may be one value per sample or per element (DESIGN.md); the network's time input is then one
per sample [B] or, for a noise level per token of a sequence x [B, T, D] (sigma [B, T, 1]: diffusion
forcing, streaming policies), one per token [B, T].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from difflab.core import processes
from difflab.core.processes import Process
from difflab.core.tensors import append_dims, as_tensor, broadcast_sigma, check_name

__all__ = [
    "PARAMETERIZATIONS",
    "PREDICTIONS",
    "TIME_INPUTS",
    "Denoiser",
    "EDMPrecond",
    "Parameterization",
    "from_x0",
    "network_output",
    "output_slopes",
    "target",
    "to_x0",
]

PREDICTIONS = ("eps", "x0", "v", "score", "velocity")
# the wrapper's prediction types, plus "edm": EDM preconditioning's F (Karras et al. 2022)
PARAMETERIZATIONS = (*PREDICTIONS, "edm")


def _check_prediction(prediction: str) -> None:
    check_name("prediction type", prediction, PREDICTIONS)


def to_x0(
    prediction: str,
    out: Tensor,
    x_t: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    alpha_dot: Tensor | None = None,
    sigma_dot: Tensor | None = None,
) -> Tensor:
    """The x0 estimate implied by a network output ``out`` of the given prediction type at x_t."""
    _check_prediction(prediction)
    if prediction == "eps":
        return (x_t - sigma * out) / alpha
    if prediction == "x0":
        return out
    if prediction == "v":
        return (alpha * x_t - sigma * out) / (alpha.square() + sigma.square())
    if prediction == "score":
        return (x_t + sigma.square() * out) / alpha
    x0 = (sigma_dot * x_t - sigma * out) / (alpha * sigma_dot - alpha_dot * sigma)
    # at sigma = 0 x_t is clean; sigma_dot may be 0 (VE) or inf (VP) there, which would give 0/0
    return torch.where(sigma == 0, x_t / alpha, x0)


def from_x0(
    prediction: str,
    x0: Tensor,
    x_t: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    alpha_dot: Tensor | None = None,
    sigma_dot: Tensor | None = None,
) -> Tensor:
    """The network output of the given prediction type that corresponds to the estimate x0 at x_t."""
    _check_prediction(prediction)
    if prediction == "x0":
        return x0
    eps = (x_t - alpha * x0) / sigma
    return target(prediction, x0, eps, alpha, sigma, alpha_dot, sigma_dot)


def target(
    prediction: str,
    x0: Tensor,
    eps: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    alpha_dot: Tensor | None = None,
    sigma_dot: Tensor | None = None,
) -> Tensor:
    """The regression target of each prediction type for x_t = alpha x0 + sigma eps."""
    _check_prediction(prediction)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return alpha * eps - sigma * x0
    if prediction == "score":
        return -eps / sigma
    return alpha_dot * x0 + sigma_dot * eps


TimeInput = Callable[[Tensor, Tensor], Tensor]

TIME_INPUTS: dict[str, TimeInput] = {
    "t": lambda t, sigma: t,
    "t1000": lambda t, sigma: 1000 * t,
    "t999": lambda t, sigma: 999 * t,
    "sigma": lambda t, sigma: sigma,
    "log_sigma": lambda t, sigma: sigma.log() / 4,
}


def _network_input(x: Tensor, s: Tensor, scale: Tensor) -> Tensor:
    """x_t = scale * x, and at s = inf x itself (it holds the unit noise there)."""
    return torch.where(torch.isinf(s), x, scale * x)


def _batch_time(c: Tensor, x: Tensor) -> Tensor:
    """The network's time input: one per sample [B] for a scalar or per-sample noise level (a
    scalar is expanded, trailing unit dims of sigma [B, 1, ...] dropped), one per token [B, T] for
    a noise level per token of a sequence x [B, T, D] (sigma [B, T] or [B, T, 1]). difflab's
    sequence networks take [B, T]; the others reduce it to [B] when all tokens share it."""
    if c.ndim == 0:
        return c.expand(x.shape[0])
    while c.ndim > 1 and c.shape[-1] == 1:
        c = c.squeeze(-1)
    return c


class Denoiser(nn.Module):
    """D(x, sigma) = E[x0 | x = x0 + sigma eps] from ``net(x_t, time, **cond)`` trained on ``process``.

    ``time_input`` is what the network's time embedding was trained on: one of ``TIME_INPUTS`` ("t" is
    the process time, e.g. the DDPM integer timestep) or a function ``(t, sigma) -> tensor``.
    ``quantize`` rounds t to the nearest training timestep (discrete processes).
    """

    def __init__(
        self,
        net: nn.Module | Callable[..., Tensor],
        process: Process,
        prediction: str = "eps",
        time_input: str | TimeInput = "t",
        quantize: bool = False,
    ) -> None:
        super().__init__()
        _check_prediction(prediction)
        if isinstance(time_input, str):
            check_name("time input", time_input, TIME_INPUTS)
            time_input = TIME_INPUTS[time_input]
        self.net, self.process, self.prediction = net, process, prediction
        self.time_input, self.quantize = time_input, quantize

    def coefficients(self, x: Tensor, sigma: Tensor) -> dict[str, Tensor]:
        """Process coefficients at each sample's noise level, broadcast against x, in x's dtype."""
        s = broadcast_sigma(as_tensor(sigma).to(x.device), x)
        alpha, sig = self.process.coefficients(s)
        coef = {"s": s, "alpha": alpha, "sigma": sig}
        if self.prediction == "velocity":
            t = self.process.t_of(s)
            coef["alpha_dot"], coef["sigma_dot"] = (
                self.process.alpha_dot(t),
                self.process.sigma_dot(t),
            )
        return {k: v.to(x.dtype) for k, v in coef.items()}

    def time(self, sigma: Tensor) -> Tensor:
        """The network's time input at noise level sigma."""
        t = self.process.t_of(sigma)
        if self.quantize:
            t = t.round()
        return self.time_input(t, sigma)

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        sigma = as_tensor(sigma).to(x.device)
        c = self.coefficients(x, sigma)
        x_t = _network_input(x, c["s"], c["alpha"])
        out = self.net(x_t, _batch_time(self.time(sigma).to(x.dtype), x), **cond)
        return to_x0(
            self.prediction,
            out,
            x_t,
            c["alpha"],
            c["sigma"],
            c.get("alpha_dot"),
            c.get("sigma_dot"),
        )

    def target(self, x0: Tensor, eps: Tensor, sigma: Tensor) -> Tensor:
        """What the network should output for x = x0 + sigma eps (its training target)."""
        c = self.coefficients(x0, sigma)
        return target(
            self.prediction, x0, eps, c["alpha"], c["sigma"], c.get("alpha_dot"), c.get("sigma_dot")
        )


class EDMPrecond(nn.Module):
    """EDM preconditioning (Karras et al. 2022, Table 1): D = c_skip x + c_out F(c_in x, c_noise),
    c_skip = sd^2/(s^2+sd^2), c_out = s sd/sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2), c_noise = ln(s)/4."""

    def __init__(self, net: nn.Module | Callable[..., Tensor], sigma_data: float = 0.5) -> None:
        super().__init__()
        self.net, self.sigma_data = net, sigma_data

    def coefficients(self, sigma: Tensor, ndim: int) -> tuple[Tensor, Tensor, Tensor]:
        """(c_skip, c_out, c_in), broadcast to ndim, exact at sigma = 0 and sigma = inf."""
        s = append_dims(as_tensor(sigma), ndim)
        r = self.sigma_data / s  # inf at s = 0, 0 at s = inf
        c_skip = torch.reciprocal(1 + r.reciprocal().square())
        c_out = self.sigma_data * torch.rsqrt(1 + r.square())
        c_in = torch.rsqrt(s.square() + self.sigma_data**2)
        return c_skip, c_out, c_in

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        sigma = as_tensor(sigma).to(device=x.device, dtype=x.dtype)
        s = broadcast_sigma(sigma, x)
        c_skip, c_out, c_in = self.coefficients(sigma, x.ndim)
        out = self.net(_network_input(x, s, c_in), _batch_time(sigma.log() / 4, x), **cond)
        return torch.where(torch.isinf(s), 0.0, c_skip * x) + c_out * out

    def target(self, x0: Tensor, eps: Tensor, sigma: Tensor) -> Tensor:
        """F's training target (x0 - c_skip x) / c_out for x = x0 + sigma eps."""
        sigma = as_tensor(sigma).to(device=x0.device, dtype=x0.dtype)
        c_skip, c_out, _ = self.coefficients(sigma, x0.ndim)
        x = x0 + append_dims(sigma, x0.ndim) * eps
        return (x0 - c_skip * x) / c_out

    def loss_weight(self, sigma: Tensor) -> Tensor:
        """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2, which makes the F-loss unit-weighted."""
        sigma = as_tensor(sigma)
        return (sigma.square() + self.sigma_data**2) / (sigma * self.sigma_data).square()


Wrapper = Denoiser | EDMPrecond


def _check_wrapper(denoiser: Any) -> None:
    if not isinstance(denoiser, (Denoiser, EDMPrecond)):
        raise TypeError(
            f"expected a difflab Denoiser or EDMPrecond, got {type(denoiser).__name__}: wrap the "
            "network with Parameterization.denoiser(net)"
        )


def network_output(
    denoiser: Wrapper, x0: Tensor, eps: Tensor, sigma: Tensor, **cond: Any
) -> tuple[Tensor, Tensor]:
    """(out, target): the raw network output at x_t = alpha x0 + sigma_t eps (the input the wrapper
    would give it at x = x0 + sigma eps) and its regression target.

    EDM: F(c_in x, ln(sigma)/4) with target (x0 - c_skip x) / c_out = c_in (sigma/sd x0 - sd eps),
    written without the cancellation of x0 - c_skip x (Karras et al. 2022, eq. 8).
    """
    _check_wrapper(denoiser)
    sigma = as_tensor(sigma).to(x0.device)
    if isinstance(denoiser, EDMPrecond):
        sd = denoiser.sigma_data
        s = broadcast_sigma(sigma.to(x0.dtype), x0)
        c_in = torch.rsqrt(s.square() + sd**2)
        noise_in = torch.rsqrt(1 + (sd / s).square())  # c_in sigma, exact at 0 and inf
        out = denoiser.net(
            c_in * x0 + noise_in * eps, _batch_time(sigma.to(x0.dtype).log() / 4, x0), **cond
        )
        return out, noise_in / sd * x0 - sd * c_in * eps
    c = denoiser.coefficients(x0, sigma)
    x_t = c["alpha"] * x0 + c["sigma"] * eps
    out = denoiser.net(x_t, _batch_time(denoiser.time(sigma).to(x0.dtype), x0), **cond)
    derivatives = (c.get("alpha_dot"), c.get("sigma_dot"))
    return out, target(denoiser.prediction, x0, eps, c["alpha"], c["sigma"], *derivatives)


def output_slopes(denoiser: Wrapper, sigma: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """(g, h) = (d out / d x0_hat, d out / d eps_hat) at a fixed network input, float64, broadcast
    against x: g from the affine map from_x0 (EDM: 1 / c_out), h = -sigma g. g^2 is the prediction's
    native loss weight on the x0 error (Kingma & Gao 2023, sec. 2)."""
    _check_wrapper(denoiser)
    sigma = as_tensor(sigma).to(device=x.device, dtype=torch.float64)
    like = torch.zeros((), dtype=torch.float64, device=x.device).expand(x.shape)
    if isinstance(denoiser, EDMPrecond):
        sd = denoiser.sigma_data
        s = broadcast_sigma(sigma, like)
        c_out = sd * torch.rsqrt(1 + (sd / s).square())
        return c_out.reciprocal(), -torch.sqrt(s.square() + sd**2) / sd
    c = denoiser.coefficients(like, sigma)
    one, zero = torch.ones_like(c["s"]), torch.zeros_like(c["s"])
    coefs = (c["alpha"], c["sigma"], c.get("alpha_dot"), c.get("sigma_dot"))
    g = from_x0(denoiser.prediction, one, zero, *coefs)  # x0_hat = 1 at x_t = 0
    h = target(denoiser.prediction, -c["s"], one, *coefs)  # eps_hat = 1 at x_t = 0
    return g, h


class Parameterization:
    """How a network meets the process: what it predicts, what time input it sees, and EDM
    preconditioning ("edm"); owns D(x, sigma) = to_x0(net(alpha x, time(sigma))) and the network's
    training target (as the probability paths of flow_matching own theirs).

    ``Parameterization(process, prediction="v", time_input="t")``; ``sigma_data`` applies to "edm".
    Its ``config`` is what a saved model records so that sampling needs nothing of training.
    """

    KEYS = ("process", "prediction", "time_input", "sigma_data")

    def __init__(
        self,
        process: Process | str,
        prediction: str = "eps",
        time_input: str = "t",
        sigma_data: float | None = None,
    ) -> None:
        self.process = processes.get(process) if isinstance(process, str) else process
        check_name("prediction type", prediction, PARAMETERIZATIONS)
        check_name("time input", time_input, TIME_INPUTS)
        if sigma_data is not None and prediction != "edm":
            raise ValueError(f"sigma_data applies to prediction 'edm', not {prediction!r}")
        self.prediction, self.time_input = prediction, time_input
        self.sigma_data = (
            (0.5 if sigma_data is None else float(sigma_data)) if prediction == "edm" else None
        )

    def denoiser(self, net: nn.Module | Callable[..., Tensor]) -> Wrapper:
        """The difflab denoiser D(x, sigma) around ``net(x_t, time, **cond)``."""
        if self.prediction == "edm":
            return EDMPrecond(net, sigma_data=self.sigma_data)
        return Denoiser(net, self.process, self.prediction, self.time_input)

    def output_slopes(self, sigma: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """(g, h) of :func:`output_slopes`, which need no network."""
        return output_slopes(self.denoiser(None), sigma, x)

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able; ``Parameterization.from_config(p.config)`` rebuilds it."""
        config = {
            "process": self.process.config(),
            "prediction": self.prediction,
            "time_input": self.time_input,
        }
        return config | ({"sigma_data": self.sigma_data} if self.prediction == "edm" else {})

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Parameterization:
        """Inverse of :attr:`config`; other keys (a training objective's) are ignored."""
        if "process" not in config:
            raise ValueError("a parameterization config needs a 'process'")
        process = config["process"]
        process = (
            processes.get(process) if isinstance(process, str) else processes.from_config(process)
        )
        return cls(process, **{k: config[k] for k in cls.KEYS[1:] if k in config})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Parameterization) and self.config == other.config

    def __repr__(self) -> str:
        edm = f", sigma_data={self.sigma_data}" if self.prediction == "edm" else ""
        return (
            f"Parameterization({self.process!r}, prediction={self.prediction!r}, "
            f"time_input={self.time_input!r}{edm})"
        )
