"""Training noise-level distributions, each an inverse CDF sigma_ve = F^-1(u) of a uniform draw u, so
one (optionally stratified) draw of u serves them all. Noise levels are sigma_ve of x = x0 + sigma eps
(DESIGN.md), one per sample.

    uniform_t    : t ~ U[t_min, t_max], sigma = sigma_ve(t)                 (Ho et al. 2020; Song et al. 2021)
    lognormal    : ln sigma ~ N(P_mean, P_std^2)                             (Karras et al. 2022)
    logit_normal : t = sigmoid(n), n ~ N(m, s^2); flow: sigma = t/(1-t) = e^n (Esser et al. 2024)
    discrete     : an integer timestep of a DDPM table, uniformly            (Ho et al. 2020)

For a :class:`~difflab.core.processes.Flow` process the time-based distributions (uniform_t,
logit_normal) apply its SD3 resolution shift, sigma -> shift * sigma (Esser et al. 2024, sec. 5.3.2).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from difflab.core.processes import Flow, Process, VPDiscrete
from difflab.core.tensors import unknown_name

__all__ = [
    "NOISE_LEVELS",
    "NoiseLevels",
    "discrete",
    "logit_normal",
    "lognormal",
    "uniform_t",
    "uniforms",
]

# torch.rand draws multiples of 2^-53 in [0, 1): keep the normal quantile finite at u = 0
_TINY = 2.0**-53


def _shift(process: Process) -> float:
    return process.shift if isinstance(process, Flow) else 1.0


def _normal_quantile(u: Tensor) -> Tensor:
    return torch.special.ndtri(u.clamp(_TINY, 1 - _TINY))


def uniforms(
    n: int,
    generator: torch.Generator | None = None,
    stratified: bool = False,
    device: torch.device | str | None = None,
) -> Tensor:
    """u ~ U[0, 1) (float64, [n]); stratified: u_i = (pi_i + U_i) / n for a random permutation pi,
    one draw per stratum [k/n, (k+1)/n) (Kingma et al. 2021's low-variance draw, in random order)."""
    if generator is not None:
        device = generator.device
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
    if stratified:
        perm = torch.randperm(n, generator=generator, device=device)
        u = (perm.to(torch.float64) + u) / n
    return u


def uniform_t(
    u: Tensor, process: Process, t_min: float | None = None, t_max: float | None = None
) -> Tensor:
    """t = t_min + (t_max - t_min) u, sigma = shift sigma_ve(t): uniform in the process's own time
    (shift: a Flow's SD3 shift, else 1)."""
    lo = process.t_min if t_min is None else t_min
    hi = process.t_max if t_max is None else t_max
    if not lo <= hi:
        raise ValueError(f"uniform_t needs t_min <= t_max, got t_min={lo}, t_max={hi}")
    return _shift(process) * process.sigma_ve(lo + (hi - lo) * u)


def lognormal(u: Tensor, process: Process, p_mean: float = -1.2, p_std: float = 1.2) -> Tensor:
    """ln sigma = P_mean + P_std Phi^-1(u) (Karras et al. 2022, Table 1)."""
    return torch.exp(p_mean + p_std * _normal_quantile(u))


def logit_normal(
    u: Tensor, process: Process, logit_mean: float = 0.0, logit_std: float = 1.0
) -> Tensor:
    """t = sigmoid(n), n = m + s Phi^-1(u) (Esser et al. 2024, eq. 19).

    For a Flow process t is the flow time itself and sigma = t / (1 - t) = e^n exactly; any other
    process maps t onto [t_min, t_max] and takes sigma_ve there.
    """
    n = logit_mean + logit_std * _normal_quantile(u)
    if isinstance(process, Flow):
        return process.shift * torch.exp(n)
    t = process.t_min + (process.t_max - process.t_min) * torch.sigmoid(n)
    return process.sigma_ve(t)


def discrete(u: Tensor, process: Process) -> Tensor:
    """sigma = sigmas[i], i = floor(N u) uniform on the N timesteps of a DDPM table (Ho et al. 2020)."""
    if not isinstance(process, VPDiscrete):
        raise ValueError(
            "noise levels 'discrete' need a VPDiscrete process (a table of timesteps), "
            f"got {type(process).__name__}"
        )
    n = process.num_train_timesteps
    i = (u * n).long().clamp(max=n - 1)
    return process.sigmas.to(u.device)[i]


_DISTRIBUTIONS: dict[str, Callable[..., Tensor]] = {
    "uniform_t": uniform_t,
    "lognormal": lognormal,
    "logit_normal": logit_normal,
    "discrete": discrete,
}
NOISE_LEVELS = tuple(_DISTRIBUTIONS)


def _defaults(fn: Callable[..., Tensor]) -> dict[str, Any]:
    """The keyword options of a distribution and their defaults."""
    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


class NoiseLevels:
    """sigma_ve ~ the named distribution, one per sample: ``NoiseLevels("lognormal", p)(n, generator)``.

    ``options`` are the distribution's keyword arguments (see :data:`NOISE_LEVELS`' functions);
    ``stratified`` draws one u per stratum of the batch (:func:`uniforms`).
    """

    def __init__(
        self, name: str, process: Process, stratified: bool = False, **options: Any
    ) -> None:
        if name not in _DISTRIBUTIONS:
            raise unknown_name("noise levels", name, NOISE_LEVELS)
        valid = _defaults(_DISTRIBUTIONS[name])
        for key in options:
            if key not in valid:
                raise ValueError(
                    f"noise levels {name!r} take no option {key!r}; valid options: "
                    f"{', '.join(valid) or 'none'}"
                )
        self.name, self.process, self.stratified = name, process, bool(stratified)
        self.options = {**valid, **options}
        # fail now on a bad option value or process, not in the middle of training
        self.sample_of(torch.tensor([0.5], dtype=torch.float64))

    @staticmethod
    def options_of(name: str) -> dict[str, Any]:
        """The options (with defaults) that the named distribution accepts."""
        if name not in _DISTRIBUTIONS:
            raise unknown_name("noise levels", name, NOISE_LEVELS)
        return _defaults(_DISTRIBUTIONS[name])

    def sample_of(self, u: Tensor) -> Tensor:
        """sigma_ve = F^-1(u) for uniform draws u."""
        return _DISTRIBUTIONS[self.name](u, self.process, **self.options)

    def __call__(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """n noise levels [n] (float64, on the generator's device)."""
        return self.sample_of(uniforms(n, generator, self.stratified, device))

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able description (the process excluded)."""
        return {"name": self.name, "stratified": self.stratified, **self.options}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items() if k != "name")
        return f"NoiseLevels({self.name!r}, {args})"
