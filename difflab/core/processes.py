"""Forward noising processes x_t = alpha(t) x0 + sigma(t) eps, each mapped onto the noise level
sigma_ve = sigma(t) / alpha(t) of x = x_t / alpha = x0 + sigma_ve * eps (DESIGN.md).

Every process exposes ``alpha(t)``, ``sigma(t)``, ``sigma_ve(t)``, its inverse ``t_of(sigma_ve)``,
``log_snr(t)``, the network-input coefficients ``coefficients(sigma_ve) -> (alpha, sigma)`` (exact at
sigma_ve = 0 and sigma_ve = inf), the time derivatives ``alpha_dot`` / ``sigma_dot`` (for velocity
parameterizations), and ``sigma_min`` / ``sigma_max``. Look processes up with :func:`get`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from difflab.core.tensors import as_tensor, check_nonnegative, unknown_name

__all__ = [
    "EDM",
    "VE",
    "Flow",
    "Interpolant",
    "Process",
    "Trig",
    "VPCosine",
    "VPDiscrete",
    "VPLinear",
    "available",
    "ddpm_alphas_cumprod",
    "ddpm_betas",
    "from_config",
    "get",
]


class Process:
    """x_t = alpha(t) x0 + sigma(t) eps for t in [t_min, t_max]; sigma_ve(t) increases with t."""

    name: ClassVar[str]
    t_min: float
    t_max: float

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma_ve(self, t: Tensor) -> Tensor:
        """Noise level of x = x_t / alpha: sigma(t) / alpha(t)."""
        t = as_tensor(t)
        return self.sigma(t) / self.alpha(t)

    def t_of(self, sigma_ve: Tensor) -> Tensor:
        """Inverse of :meth:`sigma_ve`."""
        raise NotImplementedError

    def coefficients(self, sigma_ve: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha, sigma) of the process at noise level sigma_ve, so x_t = alpha * x."""
        t = self.t_of(sigma_ve)
        return self.alpha(t), self.sigma(t)

    def scale(self, sigma_ve: Tensor) -> Tensor:
        """The network-input scaling alpha at noise level sigma_ve (x_t = scale * x)."""
        return self.coefficients(sigma_ve)[0]

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda(t) = log(alpha^2 / sigma^2) = -2 log sigma_ve(t)."""
        return -2 * torch.log(self.sigma_ve(t))

    def alpha_dot(self, t: Tensor) -> Tensor:
        """d alpha / dt."""
        raise NotImplementedError(f"the {self.name!r} process has no time derivative")

    def sigma_dot(self, t: Tensor) -> Tensor:
        """d sigma / dt."""
        raise NotImplementedError(f"the {self.name!r} process has no time derivative")

    @property
    def sigma_min(self) -> float:
        return float(self.sigma_ve(as_tensor(self.t_min)))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma_ve(as_tensor(self.t_max)))

    def config(self) -> dict[str, Any]:
        """A JSON-serializable description; ``from_config(p.config())`` rebuilds the process."""
        return {"name": self.name, **self._params()}

    def _params(self) -> dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items() if not isinstance(v, list))
        return f"{type(self).__name__}({args})"


def _vp_coefficients(sigma_ve: Tensor) -> tuple[Tensor, Tensor]:
    """alpha = 1/sqrt(1+s^2), sigma = 1/sqrt(1+1/s^2): exact at s = 0 and s = inf."""
    s = check_nonnegative(as_tensor(sigma_ve))
    return torch.rsqrt(1 + s.square()), torch.rsqrt(1 + s.square().reciprocal())


class _VariancePreserving(Process):
    """alpha^2 + sigma^2 = 1."""

    def coefficients(self, sigma_ve: Tensor) -> tuple[Tensor, Tensor]:
        return _vp_coefficients(sigma_ve)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(1 - self.alpha(t).square())


# --------------------------------------------------------------------------------------------
# DDPM discrete process


def ddpm_betas(
    schedule: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> Tensor:
    """DDPM beta tables as in diffusers: linear, scaled_linear, squaredcos_cap_v2 (Nichol & Dhariwal 2021)."""
    n = num_train_timesteps
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64).square()
    if schedule in ("squaredcos_cap_v2", "cosine"):
        i = torch.arange(n + 1, dtype=torch.float64) / n
        alpha_bar = torch.cos((i + 0.008) / 1.008 * math.pi / 2).square()
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise unknown_name("beta schedule", schedule, ["linear", "scaled_linear", "squaredcos_cap_v2"])


def ddpm_alphas_cumprod(betas: Tensor, rescale_zero_terminal_snr: bool = False) -> Tensor:
    """prod_i (1 - beta_i); optionally rescaled to zero terminal SNR (Lin et al. 2024, Alg. 1)."""
    alphas_cumprod = torch.cumprod(1 - betas.double(), 0)
    if rescale_zero_terminal_snr:
        a = alphas_cumprod.sqrt()
        a0, a_last = a[0].clone(), a[-1].clone()
        alphas_cumprod = ((a - a_last) * a0 / (a0 - a_last)).square()
    return alphas_cumprod


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of (xp, fp) at x, xp increasing, clamped to the ends."""
    x = x.to(xp.dtype).clamp(xp[0], xp[-1])
    i = torch.searchsorted(xp, x.contiguous(), right=True).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    w = (x - x0) / (x1 - x0)
    return torch.where(w == 0, f0, torch.where(w == 1, f1, f0 + w * (f1 - f0)))


class VPDiscrete(_VariancePreserving):
    """DDPM (Ho et al. 2020): alpha_bar_t = prod_{i<=t} (1 - beta_i), t = 0 .. N-1 (diffusers' indexing).

    Fractional t interpolates log sigma_ve linearly between table entries (the k-diffusion convention), so
    a sigma on the table maps back to its exact integer timestep. With zero terminal SNR the last entry
    is sigma_ve = inf and its final interval interpolates alpha instead.
    """

    name = "vp_discrete"

    def __init__(
        self,
        schedule: str = "linear",
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        rescale_zero_terminal_snr: bool = False,
        alphas_cumprod: Tensor | list[float] | None = None,
    ) -> None:
        if alphas_cumprod is None:
            betas = ddpm_betas(schedule, num_train_timesteps, beta_start, beta_end)
            table = ddpm_alphas_cumprod(betas, rescale_zero_terminal_snr)
        else:
            table = as_tensor(alphas_cumprod, torch.float64).clone()
            schedule, num_train_timesteps = "explicit", len(table)
            if table.ndim != 1 or len(table) < 2 or not bool((table[1:] < table[:-1]).all()):
                raise ValueError("alphas_cumprod must be a strictly decreasing 1-D table")
        self.schedule, self.beta_start, self.beta_end = schedule, beta_start, beta_end
        self.rescale_zero_terminal_snr = rescale_zero_terminal_snr
        self.alphas_cumprod = table
        self.sqrt_alphas_cumprod = table.sqrt()
        self.sigmas = (
            (1 - table) / table
        ).sqrt()  # sigma_ve per integer timestep (inf at zero SNR)
        self.log_sigmas = self.sigmas.log()
        self.zero_terminal_snr = bool(torch.isinf(self.sigmas[-1]))
        self.t_min, self.t_max = 0.0, float(len(table) - 1)
        self._steps = torch.arange(len(table), dtype=torch.float64)

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def _on_table(self, t: Tensor, table: Tensor, value: Tensor) -> Tensor:
        """The exact table entry at integer t (exp(log(s)) does not round-trip), else ``value``."""
        tc = t.double().clamp(self.t_min, self.t_max)
        i = tc.round()
        return torch.where(tc == i, table[i.long()], value)

    def alpha(self, t: Tensor) -> Tensor:
        t = as_tensor(t)
        a = torch.rsqrt(1 + _interp(t, self._steps, self.log_sigmas).exp().square())
        a = self._on_table(t, self.sqrt_alphas_cumprod, a)
        if self.zero_terminal_snr:  # the last interval is linear in alpha, ending at alpha = 0
            a_end = _interp(t, self._steps, self.sqrt_alphas_cumprod)
            a = torch.where(t > self.t_max - 1, a_end, a)
        return a.to(t.dtype)

    def sigma_ve(self, t: Tensor) -> Tensor:
        t = as_tensor(t)
        s = self._on_table(t, self.sigmas, _interp(t, self._steps, self.log_sigmas).exp())
        if self.zero_terminal_snr:
            a = self.alpha(t).double()
            s = torch.where(t > self.t_max - 1, torch.sqrt((1 - a.square()) / a.square()), s)
        return s.to(t.dtype)

    def t_of(self, sigma_ve: Tensor) -> Tensor:
        s = check_nonnegative(as_tensor(sigma_ve))
        t = _interp(
            s.double().log(),
            self.log_sigmas[: len(self.log_sigmas) - self.zero_terminal_snr],
            self._steps[: len(self._steps) - self.zero_terminal_snr],
        )
        if self.zero_terminal_snr:
            a_prev = self.sqrt_alphas_cumprod[-2]
            a = torch.rsqrt(1 + s.double().square())
            t = torch.where(a < a_prev, self.t_max - a / a_prev, t)
        return t.to(s.dtype)

    def _params(self) -> dict[str, Any]:
        if self.schedule == "explicit":
            return {"alphas_cumprod": self.alphas_cumprod.tolist()}
        return {
            "schedule": self.schedule,
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "rescale_zero_terminal_snr": self.rescale_zero_terminal_snr,
        }


# --------------------------------------------------------------------------------------------
# continuous VP


class VPLinear(_VariancePreserving):
    """VP SDE with linear beta(t) = b0 + t (b1 - b0) (Song et al. 2021): log alpha = -t^2 (b1-b0)/4 - t b0/2."""

    name = "vp_linear"

    def __init__(
        self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0
    ) -> None:
        self.beta_min, self.beta_max, self.t_min, self.t_max = beta_min, beta_max, t_min, t_max

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * t.square() * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self._log_alpha(as_tensor(t)))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(2 * self._log_alpha(as_tensor(t))))

    def sigma_ve(self, t: Tensor) -> Tensor:
        return torch.sqrt(torch.expm1(-2 * self._log_alpha(as_tensor(t))))

    def t_of(self, sigma_ve: Tensor) -> Tensor:
        # log(1 + s^2) = (b1-b0) t^2 / 2 + b0 t, solved without cancellation
        big_l = torch.log1p(check_nonnegative(as_tensor(sigma_ve)).square())
        d, b0 = self.beta_max - self.beta_min, self.beta_min
        return 2 * big_l / (b0 + torch.sqrt(b0 * b0 + 2 * d * big_l))

    def alpha_dot(self, t: Tensor) -> Tensor:
        t = as_tensor(t)
        return self.alpha(t) * (-0.5 * t * (self.beta_max - self.beta_min) - 0.5 * self.beta_min)

    def sigma_dot(self, t: Tensor) -> Tensor:
        t = as_tensor(t)
        return -self.alpha(t) * self.alpha_dot(t) / self.sigma(t)

    def _params(self) -> dict[str, Any]:
        return {
            "beta_min": self.beta_min,
            "beta_max": self.beta_max,
            "t_min": self.t_min,
            "t_max": self.t_max,
        }


class VPCosine(_VariancePreserving):
    """Cosine VP (Nichol & Dhariwal 2021): alpha(t) = cos((t+s)/(1+s) pi/2) / cos(s/(1+s) pi/2)."""

    name = "vp_cosine"

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946) -> None:
        self.s, self.t_min, self.t_max = s, t_min, t_max
        self._f0 = math.cos(s / (1 + s) * math.pi / 2)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.cos((as_tensor(t) + self.s) / (1 + self.s) * math.pi / 2) / self._f0

    def t_of(self, sigma_ve: Tensor) -> Tensor:
        alpha = _vp_coefficients(sigma_ve)[0]
        return torch.acos(alpha * self._f0) * (1 + self.s) * 2 / math.pi - self.s

    def alpha_dot(self, t: Tensor) -> Tensor:
        k = math.pi / (2 * (1 + self.s))
        return -k * torch.sin((as_tensor(t) + self.s) * k) / self._f0

    def sigma_dot(self, t: Tensor) -> Tensor:
        t = as_tensor(t)
        return -self.alpha(t) * self.alpha_dot(t) / self.sigma(t)

    def _params(self) -> dict[str, Any]:
        return {"s": self.s, "t_min": self.t_min, "t_max": self.t_max}


# --------------------------------------------------------------------------------------------
# variance exploding


class _Exploding(Process):
    """alpha = 1: x_t = x0 + sigma(t) eps."""

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(as_tensor(t))

    def alpha_dot(self, t: Tensor) -> Tensor:
        return torch.zeros_like(as_tensor(t))

    def sigma_ve(self, t: Tensor) -> Tensor:
        return self.sigma(t)

    def coefficients(self, sigma_ve: Tensor) -> tuple[Tensor, Tensor]:
        s = check_nonnegative(as_tensor(sigma_ve))
        return torch.ones_like(s), s


class VE(_Exploding):
    """VE SDE (Song et al. 2021): sigma(t) = sigma_min (sigma_max / sigma_min)^t, t in [0, 1]."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        self._smin, self._smax = sigma_min, sigma_max
        self._log_ratio = math.log(sigma_max / sigma_min)
        self.t_min, self.t_max = 0.0, 1.0

    def sigma(self, t: Tensor) -> Tensor:
        return self._smin * torch.exp(as_tensor(t) * self._log_ratio)

    def sigma_dot(self, t: Tensor) -> Tensor:
        return self.sigma(t) * self._log_ratio

    def t_of(self, sigma_ve: Tensor) -> Tensor:
        return torch.log(check_nonnegative(as_tensor(sigma_ve)) / self._smin) / self._log_ratio

    @property
    def sigma_min(self) -> float:
        return self._smin

    @property
    def sigma_max(self) -> float:
        return self._smax

    def _params(self) -> dict[str, Any]:
        return {"sigma_min": self._smin, "sigma_max": self._smax}


class EDM(_Exploding):
    """EDM (Karras et al. 2022): t = sigma, alpha = 1."""

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0) -> None:
        self.t_min, self.t_max = sigma_min, sigma_max

    def sigma(self, t: Tensor) -> Tensor:
        return as_tensor(t)

    def sigma_dot(self, t: Tensor) -> Tensor:
        return torch.ones_like(as_tensor(t))

    def t_of(self, sigma_ve: Tensor) -> Tensor:
        return check_nonnegative(as_tensor(sigma_ve))

    def _params(self) -> dict[str, Any]:
        return {"sigma_min": self.t_min, "sigma_max": self.t_max}


# --------------------------------------------------------------------------------------------
# interpolants


class Flow(Process):
    """Rectified flow / flow matching (Liu et al. 2023; Lipman et al. 2023): x_t = (1-t) x0 + t eps.

    sigma_ve = t / (1-t). ``shift`` is SD3's resolution shift (Esser et al. 2024), a warp of the time
    grid used for sampling and training, t -> shift t / (1 + (shift-1) t), i.e. sigma_ve -> shift sigma_ve.
    """

    name = "flow"

    def __init__(self, shift: float = 1.0, t_min: float = 1e-3, t_max: float = 1.0) -> None:
        if shift <= 0:
            raise ValueError(f"flow shift must be > 0, got {shift}")
        self.shift, self.t_min, self.t_max = shift, t_min, t_max

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - as_tensor(t)

    def sigma(self, t: Tensor) -> Tensor:
        return as_tensor(t)

    def t_of(self, sigma_ve: Tensor) -> Tensor:
        return torch.reciprocal(1 + check_nonnegative(as_tensor(sigma_ve)).reciprocal())

    def coefficients(self, sigma_ve: Tensor) -> tuple[Tensor, Tensor]:
        s = check_nonnegative(as_tensor(sigma_ve))
        return torch.reciprocal(1 + s), torch.reciprocal(1 + s.reciprocal())

    def alpha_dot(self, t: Tensor) -> Tensor:
        return -torch.ones_like(as_tensor(t))

    def sigma_dot(self, t: Tensor) -> Tensor:
        return torch.ones_like(as_tensor(t))

    def _params(self) -> dict[str, Any]:
        return {"shift": self.shift, "t_min": self.t_min, "t_max": self.t_max}


class Trig(_VariancePreserving):
    """Trigonometric (cosine) interpolant: x_t = cos(pi t/2) x0 + sin(pi t/2) eps, sigma_ve = tan(pi t/2)."""

    name = "trig"

    def __init__(self, t_min: float = 1e-3, t_max: float = 1.0) -> None:
        self.t_min, self.t_max = t_min, t_max

    def alpha(self, t: Tensor) -> Tensor:
        return torch.sin((1 - as_tensor(t)) * math.pi / 2)  # exactly 0 at t = 1

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sin(as_tensor(t) * math.pi / 2)

    def t_of(self, sigma_ve: Tensor) -> Tensor:
        return torch.atan(check_nonnegative(as_tensor(sigma_ve))) * (2 / math.pi)

    def alpha_dot(self, t: Tensor) -> Tensor:
        return -math.pi / 2 * self.sigma(t)

    def sigma_dot(self, t: Tensor) -> Tensor:
        return math.pi / 2 * self.alpha(t)

    def _params(self) -> dict[str, Any]:
        return {"t_min": self.t_min, "t_max": self.t_max}


class Interpolant(Process):
    """A stochastic interpolant x_t = alpha(t) x0 + sigma(t) eps (Albergo et al. 2023) from any two
    differentiable functions with sigma/alpha increasing; t_of by bisection, derivatives by autograd."""

    name = "interpolant"

    def __init__(
        self,
        alpha: Callable[[Tensor], Tensor],
        sigma: Callable[[Tensor], Tensor],
        t_min: float = 0.0,
        t_max: float = 1.0,
    ) -> None:
        self._alpha, self._sigma, self.t_min, self.t_max = alpha, sigma, t_min, t_max

    def alpha(self, t: Tensor) -> Tensor:
        return self._alpha(as_tensor(t))

    def sigma(self, t: Tensor) -> Tensor:
        return self._sigma(as_tensor(t))

    def t_of(self, sigma_ve: Tensor) -> Tensor:
        s = check_nonnegative(as_tensor(sigma_ve))
        lo = torch.full_like(s, self.t_min, dtype=torch.float64)
        hi = torch.full_like(s, self.t_max, dtype=torch.float64)
        for _ in range(64):  # bisection to float64 resolution
            mid = (lo + hi) / 2
            below = self.sigma_ve(mid) < s
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return ((lo + hi) / 2).to(s.dtype)

    def _derivative(self, fn: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
        with torch.enable_grad():
            t = as_tensor(t).detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(fn(t).sum(), t)
        return grad

    def alpha_dot(self, t: Tensor) -> Tensor:
        return self._derivative(self._alpha, t)

    def sigma_dot(self, t: Tensor) -> Tensor:
        return self._derivative(self._sigma, t)

    def config(self) -> dict[str, Any]:
        raise TypeError("an Interpolant built from Python functions has no serializable config")


# --------------------------------------------------------------------------------------------
# registry

_PROCESSES: dict[str, type[Process]] = {
    cls.name: cls for cls in (VPDiscrete, VPLinear, VPCosine, VE, EDM, Flow, Trig)
}
_ALIASES = {"ddpm": "vp_discrete", "rectified_flow": "flow", "cosine_interpolant": "trig"}


def available() -> list[str]:
    """Names accepted by :func:`get` (aliases included)."""
    return sorted([*_PROCESSES, *_ALIASES])


def get(name: str, **params: Any) -> Process:
    """Build a process by name: ``get("vp_discrete", schedule="scaled_linear", beta_start=0.00085, ...)``."""
    key = _ALIASES.get(name, name)
    if key not in _PROCESSES:
        raise unknown_name("process", name, available())
    try:
        return _PROCESSES[key](**params)
    except TypeError as e:
        raise ValueError(f"bad parameters for process {name!r}: {e}") from None


def from_config(config: dict[str, Any]) -> Process:
    """Inverse of :meth:`Process.config`."""
    config = dict(config)
    if "name" not in config:
        raise ValueError("process config has no 'name'")
    return get(config.pop("name"), **config)
