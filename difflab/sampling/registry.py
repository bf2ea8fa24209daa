"""The sampler registry and the one calling convention (DESIGN.md):

    x0 = sampler(denoiser, x, sigmas, *, generator=None, callback=None, cond=None, **options)

A sampler is written as a *body* over a validated :class:`SamplerGrid`; :func:`register` wraps it
into the public function, which validates its input once, handles a grid that starts at
sigma = inf, and records the sampler's NFE, order and stochasticity.

Starting at sigma = inf (zero terminal SNR): x then holds the unit noise (the limit of x / sigma), and
every sampler's first interval is the exact-in-the-limit data-prediction step x_1 = D(x, inf) + sigma_1 x
(1 NFE), after which it runs on the rest of the grid: NFE = 1 + nfe(steps - 1).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from difflab.core.tensors import as_tensor, check_finite, check_name, unknown_name
from difflab.sampling.noise import NOISES, noise_source
from difflab.sampling.transitions import Step, draw

__all__ = [
    "Callback",
    "SamplerGrid",
    "SamplerInfo",
    "StepFactory",
    "available",
    "get",
    "info",
    "noise_source",
    "register",
    "steps_within",
    "validate",
]

Callback = Callable[[int, float, Tensor, Tensor], None]
StepFactory = Callable[["SamplerGrid", Tensor, str], Step]  # (grid, x, noise kind) -> a Step


class DenoiserFn(Protocol):
    def __call__(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor: ...


class SamplerGrid:
    """The grid a sampler body runs over: the validated noise levels bound to the denoiser, its
    conditioning and the callback. Host floats for coefficients (no device sync per step) and a
    device copy in x's dtype for the denoiser. ``denoise(x, i)`` evaluates D(x, sigma_i) and reports
    it to the callback. (Not :class:`difflab.core.grids.Grid`, the signature of the functions that
    build grids.)"""

    def __init__(
        self,
        denoiser: DenoiserFn,
        x: Tensor,
        sigmas: Sequence[float],
        cond: dict[str, Any] | None,
        callback: Callback | None,
        offset: int = 0,
    ) -> None:
        self.sigmas = [float(s) for s in sigmas]
        self.steps = len(self.sigmas) - 1
        self._dev = torch.tensor(self.sigmas, dtype=x.dtype, device=x.device)
        self._denoiser, self._cond, self._callback = denoiser, cond or {}, callback
        self._batch, self._offset = x.shape[0], offset

    def __getitem__(self, i: int) -> float:
        return self.sigmas[i]

    def sigma(self, i: int) -> Tensor:
        """sigma_i as a [B] view on x's device (no allocation, no sync)."""
        return self._dev[i].expand(self._batch)

    def evaluate(self, x: Tensor, sigma: Tensor, rows: Tensor | None = None) -> Tensor:
        """D(x, sigma) at a noise level per sample; ``rows`` selects the samples of a sub-batch (and
        the matching rows of per-sample conditioning tensors)."""
        cond = self._cond
        if rows is not None:
            cond = {k: v[rows] if _per_sample(v, self._batch) else v for k, v in cond.items()}
        return self._denoiser(x, sigma, **cond)

    def denoise(self, x: Tensor, i: int, sigma: float | None = None, stage: bool = False) -> Tensor:
        """D(x, sigma_i), or D(x, sigma) at an off-grid level. The callback sees the evaluations at
        grid points that start a step; ``stage=True`` (or an off-grid sigma) marks an inner stage."""
        if sigma is None:
            s = self._dev[i].expand(self._batch)
        else:
            s = torch.full((self._batch,), sigma, dtype=x.dtype, device=x.device)
        denoised = self._denoiser(x, s, **self._cond)
        if self._callback is not None and sigma is None and not stage:
            self._callback(i + self._offset, self.sigmas[i], x, denoised)
        return denoised


def _per_sample(value: Any, batch: int) -> bool:
    return isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == batch


@dataclass(frozen=True)
class SamplerInfo:
    """What the registry knows of a sampler."""

    name: str
    fn: Callable[..., Tensor]
    order: int
    stochastic: bool
    nfe_of_steps: Callable[..., int]
    summary: str
    adaptive: bool = False  # step count chosen at run time; the NFE is reported in ``stats``
    noises: tuple[str, ...] = ("gaussian",)  # noise sources (stochastic samplers), default first
    transitions: bool = False  # written as Gaussian transitions (difflab.sampling.transitions)
    body: Callable[..., Tensor] | None = field(default=None, repr=False, compare=False)
    options: frozenset[str] = frozenset()  # the options the sampler accepts

    def run(
        self,
        denoiser: DenoiserFn,
        x: Tensor,
        sigmas: Tensor | Sequence[float],
        options: dict[str, Any],
        *,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        callback: Callback | None = None,
        cond: dict[str, Any] | None = None,
        steps: StepFactory | None = None,
    ) -> Tensor:
        """Validate a call, start from sigma = inf if the grid does (module docstring) and run the
        body; ``steps`` builds the body's :class:`~difflab.sampling.transitions.Step` (a sampler
        written as transitions; default: draw the noise from ``generator``)."""
        unknown = set(options) - self.options
        if unknown:
            raise unknown_name(
                f"option for sampler {self.name!r}", sorted(unknown)[0], self.options
            )
        kind = options.pop("noise", self.noises[0])
        if kind not in self.noises:
            raise ValueError(
                f"{self.name}: unknown noise {kind!r}; valid: {', '.join(self.noises)}"
            )
        s = validate(x, sigmas)
        offset = 0
        if math.isinf(s[0]):  # zero terminal SNR: x is the unit noise; see the module docstring
            start = SamplerGrid(denoiser, x, s[:1], cond, callback)
            x = start.denoise(x, 0) + s[1] * x
            s, offset = s[1:], 1
            if len(s) == 1:
                return x
        grid = SamplerGrid(denoiser, x, s, cond, callback, offset)
        extra: dict[str, Any] = {}
        if self.transitions:
            extra["step"] = (steps or _sampling_step(generator))(grid, x, kind)
        elif self.stochastic:
            extra["noise"] = noise_source(x, generator, kind)
        assert self.body is not None
        return self.body(grid, x, **extra, **options)

    def nfe(self, steps: int, infinite_start: bool = False, **options: Any) -> int:
        """Denoiser evaluations for a grid of ``steps`` intervals (ending in 0). ``options``: the
        sampler options its count depends on (e.g. ``restart_k``), for samplers whose rule takes them."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if self.adaptive:
            raise ValueError(
                f"{self.name} chooses its steps adaptively: its NFE is reported in stats"
            )
        if infinite_start:  # the first interval is one data-prediction step (module docstring)
            return 1 + (self.nfe_of_steps(steps - 1, **options) if steps > 1 else 0)
        return self.nfe_of_steps(steps, **options)

    def steps_for(
        self, nfe: int, infinite_start: bool = False, exact: bool = False, **options: Any
    ) -> int | None:
        """The most steps whose NFE (:meth:`nfe`) is at most ``nfe``, or None where one step costs
        more; with ``exact``, that count only if it spends exactly ``nfe`` (None for an even NFE of
        Heun, 2 steps - 1). ``info("heun").steps_for(10) == 5``."""
        if isinstance(nfe, bool) or not isinstance(nfe, int):
            raise ValueError(f"an NFE budget must be an integer, got {nfe!r}")
        if self.adaptive:
            raise ValueError(f"{self.name} chooses its steps adaptively: it has no fixed NFE")
        return steps_within(lambda n: self.nfe(n, infinite_start, **options), nfe, exact)


def steps_within(nfe: Callable[[int], float], budget: int, exact: bool = False) -> int | None:
    """The most steps n in 1..budget with ``nfe(n) <= budget`` (every step costs at least one
    evaluation, so no more can fit), or None; with ``exact``, n only if nfe(n) == budget. ``nfe``
    is any step count -> evaluations rule (another library's too); one that is inf for a count
    rules that count out."""
    steps = next((n for n in range(budget, 0, -1) if nfe(n) <= budget), None)
    if exact and steps is not None and nfe(steps) != budget:
        return None
    return steps


_REGISTRY: dict[str, SamplerInfo] = {}


def validate(x: Tensor, sigmas: Tensor | Sequence[float]) -> list[float]:
    """The checks every sampler makes before any evaluation: x a finite floating-point tensor
    [B, ...], sigmas a 1-D grid of at least 2 levels, >= 0, strictly decreasing, inf only first;
    returns the levels as host floats."""
    if not isinstance(x, Tensor) or x.ndim < 1:
        raise ValueError("x must be a tensor [B, ...] (noise already multiplied by sigmas[0])")
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point, got {x.dtype}")
    check_finite(x, "x")
    s = as_tensor(sigmas).detach().to("cpu", torch.float64)
    if s.ndim != 1 or len(s) < 2:
        raise ValueError(
            f"sigmas must be a 1-D grid of at least 2 values, got shape {tuple(s.shape)}"
        )
    if bool(torch.isnan(s).any()) or bool((s < 0).any()):
        raise ValueError("sigmas must be >= 0 and not NaN")
    if bool(torch.isinf(s[1:]).any()):
        raise ValueError("only sigmas[0] may be inf (zero terminal SNR)")
    bad = torch.nonzero(s[1:] >= s[:-1]).flatten()
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"sigmas must be strictly decreasing: sigmas[{i}] = {float(s[i]):g} <= sigmas[{i + 1}] = {float(s[i + 1]):g}"
        )
    return s.tolist()


def register(
    name: str,
    *,
    order: int,
    nfe: Callable[[int], int] = lambda n: n,
    stochastic: bool = False,
    adaptive: bool = False,
    aliases: Sequence[str] = (),
    noises: Sequence[str] = ("gaussian",),
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Register ``body(grid, x, *, noise, **options)`` as the public sampler ``name``.

    ``noise(sigma, sigma_next)`` is a standard normal tensor like x for that interval, from the
    caller's generator(s) (stochastic samplers only; :mod:`difflab.sampling.noise`). A stochastic
    body that takes ``step`` instead writes each interval as a Gaussian transition
    (:mod:`difflab.sampling.transitions`), which makes its trajectories and log-probabilities
    available (:mod:`difflab.sampling.trajectory`). ``noises``: the
    sources the sampler can take, its default first; with more than one, the public option
    ``noise="brownian"`` (or "gaussian") chooses. ``nfe(n)`` is the exact denoiser-evaluation count
    for n intervals.
    """
    unknown = set(noises) - set(NOISES)
    if unknown or not noises:
        raise ValueError(f"{name}: noises must be some of {', '.join(NOISES)}, got {noises}")

    def wrap(body: Callable[..., Tensor]) -> Callable[..., Tensor]:
        accepted = {
            p.name
            for p in inspect.signature(body).parameters.values()
            if p.kind == p.KEYWORD_ONLY and p.name not in ("noise", "step")
        }
        if stochastic and len(noises) > 1:
            accepted.add("noise")
        transitions = "step" in inspect.signature(body).parameters
        if transitions and not stochastic:
            raise ValueError(f"{name}: a sampler written as transitions must be stochastic")

        def sampler(
            denoiser: DenoiserFn,
            x: Tensor,
            sigmas: Tensor | Sequence[float],
            *,
            generator: torch.Generator | Sequence[torch.Generator] | None = None,
            callback: Callback | None = None,
            cond: dict[str, Any] | None = None,
            **options: Any,
        ) -> Tensor:
            return entry.run(
                denoiser, x, sigmas, options, generator=generator, callback=callback, cond=cond
            )

        sampler.__name__ = sampler.__qualname__ = name
        sampler.__doc__ = body.__doc__
        sampler.__module__ = body.__module__
        summary = (body.__doc__ or name).strip().splitlines()[0]
        entry = SamplerInfo(
            name, sampler, order, stochastic, nfe, summary, adaptive, tuple(noises),
            transitions, body, frozenset(accepted),
        )  # fmt: skip
        for key in (name, *aliases):
            if key in _REGISTRY:
                raise ValueError(f"sampler name {key!r} registered twice")
            _REGISTRY[key] = entry
        return sampler

    return wrap


def _sampling_step(generator: torch.Generator | Sequence[torch.Generator] | None) -> StepFactory:
    """Steps that draw their noise from ``generator`` (:func:`~difflab.sampling.transitions.draw`)."""
    return lambda grid, x, kind: draw(grid.sigmas, noise_source(x, generator, kind))


def available() -> list[str]:
    """Registered sampler names (aliases included)."""
    _load()
    return sorted(_REGISTRY)


def info(name: str) -> SamplerInfo:
    """NFE, order and stochasticity of a sampler: ``info("heun").nfe(10) == 19``."""
    _load()
    check_name("sampler", name, _REGISTRY)
    return _REGISTRY[name]


def get(name: str) -> Callable[..., Tensor]:
    """The sampler function registered as ``name``."""
    return info(name).fn


def _load() -> None:
    """Import the modules that register samplers (on first use, to keep import time small)."""
    import difflab.sampling.samplers  # noqa: F401
