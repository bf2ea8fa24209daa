"""Anchors: samplers of other libraries (diffusers 0.42, k-diffusion 0.1.1) and of difflab run on the
same exact model, from the same start, with their NFE counted by counting model calls.

A :class:`Method` is one sampler with one setting on one step grid. ``method.steps_for(budget)``
is the most steps whose planned NFE fits the budget; ``method.prepare(problem, steps, seed)`` returns a
:class:`Job`, a zero-argument callable that samples once and returns the endpoint in difflab's
coordinates x = x0 + sigma eps (at sigma = 0 for every method that ends there), and the counter of its
model calls.

A :class:`Problem` is a process (its sigma_max is where every method starts), the start x at
sigma_max, and the model in the two forms the libraries call:

- difflab and k-diffusion call the denoiser D(x, sigma) = E[x0 | x] in noise-level coordinates.
- diffusers calls an eps-prediction network eps(x_t, t) of a DDPM model, x_t = alpha_t x. Its exact
  form maps the timestep t (integer or fractional) to sigma_t through the scheduler's own alphas_cumprod
  table (diffusers keeps it in float32; the network of a diffusers model was trained on that table),
  interpolating log sigma linearly between entries as difflab's VPDiscrete does, and returns
  E[eps | x = x_t / alpha_t] at sigma_t. The start is the same point x, handed over as
  x_t = x / sqrt(1 + sigma_T^2) (DDIM-like schedulers) or as x itself (the k-diffusion ports Euler,
  EulerAncestral, Heun, LMS, whose sample lives in sigma coordinates); the float32 table makes the
  scheduler's sigma_T differ from difflab's by up to 8e-5 (relative), which moves the endpoint by far
  less than any error reported. The endpoint goes back through x = x_t sqrt(1 + sigma_end^2), with
  sigma_end the scheduler's last level (0, except for DEIS, which stops at the table's sigma_min).

k-diffusion's ``sampling`` module is loaded from its file: the package ``__init__`` (and ``utils``)
import torchvision, which the environment lacks; a stand-in is put in ``sys.modules`` only while
``utils`` loads. Its SDE samplers get a noise sampler with independent normal draws from a seeded
generator (what their default Brownian tree gives for one draw per step), its adaptive DPM-Solver a
final denoising step D(x, sigma_min) (1 NFE, counted), since it stops at sigma_min.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.machinery
import importlib.util
import inspect
import itertools
import math
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from difflab import sampling, schedules
from difflab.core.counting import CountingDenoiser
from difflab.core.processes import VPDiscrete
from difflab.sampling.registry import steps_within

__all__ = [
    "ADAPTIVE",
    "DIFFUSERS",
    "GRIDS",
    "K_SAMPLERS",
    "Job",
    "Method",
    "Problem",
    "Unsupported",
    "build_grid",
    "difflab_methods",
    "diffusers_methods",
    "exact_eps_network",
    "exact_problem",
    "k_diffusion_methods",
    "k_diffusion_sampling",
    "sliced_w2",
    "within",
    "zero_cost_problem",
]

Denoiser = Callable[[Tensor, Tensor], Tensor]
EpsNetwork = Callable[[Tensor, Tensor], Tensor]


def _sliced_w2(a: Tensor, b: Tensor, projections: int, generator: torch.Generator) -> Tensor:
    """Sliced 2-Wasserstein distance between two equal-size samples: the root mean over random unit
    directions of the squared W2 of the 1-D projections (sorted samples matched in order)."""
    if a.shape != b.shape:
        raise ValueError(
            f"samples must have the same shape, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    dirs = torch.randn(projections, a.shape[1], generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    pa = torch.sort(a.double() @ dirs.T, dim=0).values
    pb = torch.sort(b.double() @ dirs.T, dim=0).values
    return (pa - pb).square().mean().sqrt()


try:  # the shared metric, once difflab ships it
    from difflab.testing.metrics import sliced_w2
except ImportError:  # until then the local one above, with the same signature
    sliced_w2 = _sliced_w2


class Unsupported(Exception):
    """The method cannot run this problem as asked (say, its grid does not start at sigma_max)."""


# ------------------------------------------------------------------------------------------------
# the problem: a process, a start, and the model in each library's form


@dataclass(frozen=True)
class Problem:
    """A start ``x`` at ``process.sigma_max`` and the model as a denoiser and as an eps network;
    ``grids``: grids fitted to this problem, label -> {steps: sigmas}, beside the GRIDS of any."""

    process: VPDiscrete
    x: Tensor
    denoiser: Denoiser
    eps_network: Callable[[VPDiscrete], EpsNetwork]  # table -> eps(x_t, t) on that table
    grids: dict[str, dict[int, Tensor]] = field(default_factory=dict)

    @property
    def sigma_max(self) -> float:
        return self.process.sigma_max


def exact_eps_network(mixture: Any, table: VPDiscrete) -> EpsNetwork:
    """The exact eps-prediction network of ``mixture`` for a DDPM model trained on ``table``."""

    def eps(x_t: Tensor, t: Tensor | float) -> Tensor:
        sigma = table.sigma_ve(torch.as_tensor(t, dtype=torch.float64).reshape(()))
        return mixture.eps(x_t * torch.sqrt(1 + sigma.square()).to(x_t.dtype), sigma)

    return eps


def exact_problem(mixture: Any, process: VPDiscrete, x: Tensor) -> Problem:
    """The exact model of a :class:`difflab.testing.GaussianMixture`, starting from ``x``."""
    return Problem(process, x, mixture.denoise, lambda table: exact_eps_network(mixture, table))


def zero_cost_problem(process: VPDiscrete, x: Tensor) -> Problem:
    """A model that costs nothing (D(x) = x, eps(x_t) = x_t): what remains is a sampler's own loop."""
    return Problem(process, x, lambda x, sigma: x, lambda table: lambda x_t, t: x_t)


# ------------------------------------------------------------------------------------------------
# methods


@dataclass
class Job:
    """One prepared sampling run: ``job()`` samples and returns the endpoint (difflab coordinates);
    ``job.counter.calls`` counts the model calls of every run so far. To run it again, call
    ``job.reset()`` first (it restarts a stateful scheduler; untimed in the overhead benchmark)."""

    run: Callable[[], Tensor]
    counter: CountingDenoiser
    reset: Callable[[], None] = lambda: None

    def __call__(self) -> Tensor:
        return self.run()


@dataclass(frozen=True)
class Method:
    """One sampler with one setting on one grid, from any library."""

    library: str
    sampler: str
    setting: str  # options, "" for the defaults
    grid: str
    stochastic: bool
    steps_for: Callable[[int], int | None] = field(repr=False)  # NFE budget -> steps, or None
    prepare: Callable[[Problem, int, int], Job] = field(repr=False)  # (problem, steps, seed) -> job

    @property
    def label(self) -> str:
        setting = f"({self.setting})" if self.setting else ""
        return f"{self.sampler}{setting}"


def within(nfe: Callable[[int], int]) -> Callable[[int], int | None]:
    """budget -> the most steps (1..budget) whose NFE is <= budget, or None. A step count the
    sampler cannot run (``nfe`` raises) does not fit."""

    @cache
    def cost(steps: int) -> float:
        try:
            return nfe(steps)
        except Exception:
            return math.inf

    return lambda budget: steps_within(cost, budget)


def setting_label(options: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in options.items())


# ------------------------------------------------------------------------------------------------
# step grids shared by difflab and k-diffusion: label -> (difflab grid name, options, endpoints?)

GRIDS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "karras": ("karras", {}, True),
    "exponential": ("exponential", {}, True),
    "uniform_t": ("uniform_t", {}, True),
    "trailing": ("uniform_t", {"spacing": "trailing"}, False),
    "kl_optimal": ("kl_optimal", {}, True),
    "beta": ("beta", {}, True),
    "ays": ("ays", {}, False),
}


def build_grid(label: str, steps: int, problem: Problem) -> Tensor:
    """The grid ``label`` of ``steps`` intervals ending in 0, between the process's sigma_min and
    sigma_max (table grids take the process's table), or the problem's own fitted grid of that
    label; it must start at sigma_max."""
    if label in problem.grids:
        if steps not in problem.grids[label]:
            raise Unsupported(f"grid {label!r} was not fitted for {steps} steps")
        return problem.grids[label][steps]
    process = problem.process
    name, options, endpoints = GRIDS[label]
    ends = (process.sigma_min, process.sigma_max) if endpoints else (None, None)
    try:
        sigmas = schedules.get(name)(steps, *ends, process=process, **options)
    except ValueError as e:
        raise Unsupported(f"grid {label!r}: {e}") from None
    if not math.isclose(float(sigmas[0]), process.sigma_max, rel_tol=1e-9):
        raise Unsupported(f"grid {label!r} starts at {float(sigmas[0]):.6g}, not sigma_max")
    return sigmas


def _grid_method(
    library: str,
    sampler: str,
    options: dict[str, Any],
    grid: str,
    stochastic: bool,
    nfe: Callable[[int], int],
    call: Callable[[Denoiser, Tensor, Tensor, int], Tensor],
) -> Method:
    """A method that walks a difflab grid: ``call(model, x, sigmas, seed)`` runs the sampler."""

    def prepare(problem: Problem, steps: int, seed: int) -> Job:
        sigmas = build_grid(grid, steps, problem)
        counter = CountingDenoiser(problem.denoiser)
        return Job(lambda: call(counter, problem.x.clone(), sigmas, seed), counter)

    label = setting_label(options)
    return Method(library, sampler, label, grid, stochastic, within(nfe), prepare)


ADAPTIVE = "adaptive"  # the grid label of methods that choose their own steps


def _adaptive_method(
    library: str,
    sampler: str,
    options: dict[str, Any],
    stochastic: bool,
    call: Callable[[Denoiser, Tensor, VPDiscrete, int], Tensor],
) -> Method:
    """A method that chooses its own steps from sigma_max down: ``call(model, x, process, seed)``.
    Its NFE follows from its tolerances, not from a step count: it plans one run (steps = 1)
    whatever the budget, and the benchmark drops the runs whose counted NFE exceeds the budget."""

    def prepare(problem: Problem, steps: int, seed: int) -> Job:
        counter = CountingDenoiser(problem.denoiser)
        return Job(lambda: call(counter, problem.x.clone(), problem.process, seed), counter)

    label = setting_label(options)
    return Method(library, sampler, label, ADAPTIVE, stochastic, lambda budget: 1, prepare)


# ------------------------------------------------------------------------------------------------
# difflab


def difflab_methods(name: str, options: dict[str, Any], grids: list[str]) -> list[Method]:
    """The registered difflab sampler ``name`` with ``options`` on each grid; an adaptive sampler
    once, on [sigma_max, sigma_min, 0]."""
    entry = sampling.info(name)

    def call(model: Denoiser, x: Tensor, sigmas: Tensor, seed: int) -> Tensor:
        g = torch.Generator(x.device).manual_seed(seed)
        return entry.fn(model, x, sigmas, generator=g, **options)

    if entry.adaptive:
        return [
            _adaptive_method(
                "difflab", name, options, entry.stochastic,
                lambda model, x, p, seed: call(model, x, [p.sigma_max, p.sigma_min, 0.0], seed),
            )
        ]  # fmt: skip
    rule = inspect.signature(entry.nfe_of_steps).parameters.values()
    takes_all = any(p.kind == p.VAR_KEYWORD for p in rule)
    counted = {k: v for k, v in options.items() if takes_all or k in {p.name for p in rule}}
    return [
        _grid_method(
            "difflab", name, options, grid, entry.stochastic,
            lambda n: entry.nfe(n, **counted), call,
        )
        for grid in grids
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------
# k-diffusion


# name -> settings: (options, stochastic). eta = 0 turns the SDE samplers into ODE solvers.
K_SAMPLERS: dict[str, list[tuple[dict[str, Any], bool]]] = {
    "euler": [({}, False)],
    "heun": [({}, False)],
    "dpm_2": [({}, False)],
    "lms": [({}, False)],
    "dpmpp_2m": [({}, False)],
    "dpmpp_2m_sde": [
        ({}, True),
        ({"solver_type": "heun"}, True),
        ({"eta": 0.0, "solver_type": "heun"}, False),
    ],
    "dpmpp_3m_sde": [({}, True), ({"eta": 0.0}, False)],
    "dpmpp_sde": [({}, True), ({"eta": 0.0}, False)],
}
K_ADAPTIVE_RTOL = (
    0.5,
    0.2,
    0.1,
    0.05,
    0.02,
    0.01,
    0.005,
    0.002,
    0.001,
)  # atol = 0.156 rtol (default)


# ---- k-diffusion's sampling module, loaded without its package __init__ (needs torchvision) ----


@contextlib.contextmanager
def _stand_in_torchvision() -> Iterator[None]:
    """Empty torchvision modules while the block runs, unless torchvision is importable
    (k_diffusion.utils imports it for image helpers that sampling does not use)."""
    if importlib.machinery.PathFinder.find_spec("torchvision") is not None:
        yield
        return
    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional"]
    modules = {n: types.ModuleType(n) for n in names}
    for parent, child in itertools.pairwise(names):
        setattr(modules[parent], child.rsplit(".", 1)[1], modules[child])
    sys.modules.update(modules)
    try:
        yield
    finally:
        for n in names:
            sys.modules.pop(n, None)


def _load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@cache
def k_diffusion_sampling() -> types.ModuleType:
    """``k_diffusion.sampling`` (k-diffusion 0.1.1), or ImportError when k-diffusion is not installed
    (``pip install k-diffusion==0.1.1.post1 --no-deps`` plus torchsde and scipy)."""
    spec = importlib.machinery.PathFinder.find_spec("k_diffusion")  # sys.path, not sys.modules
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed (pip install k-diffusion --no-deps)")
    root = Path(next(iter(spec.submodule_search_locations)))
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(root)]
    sys.modules["k_diffusion"] = package
    with _stand_in_torchvision():
        package.utils = _load_file("k_diffusion.utils", root / "utils.py")
    package.sampling = _load_file("k_diffusion.sampling", root / "sampling.py")
    return package.sampling


def _k_call(
    name: str, options: dict[str, Any]
) -> Callable[[Denoiser, Tensor, Tensor, int], Tensor]:
    fn = getattr(k_diffusion_sampling(), f"sample_{name}")
    takes_noise = "noise_sampler" in inspect.signature(fn).parameters

    def call(model: Denoiser, x: Tensor, sigmas: Tensor, seed: int) -> Tensor:
        extra = {}
        if takes_noise:
            g = torch.Generator(x.device).manual_seed(seed)
            extra["noise_sampler"] = lambda s, s_next: torch.randn(
                x.shape, generator=g, dtype=x.dtype, device=x.device
            )
        return fn(model, x, sigmas.to(x.dtype), disable=True, **options, **extra)

    return call


def _probe_nfe(call: Callable[[Denoiser, Tensor, Tensor, int], Tensor]) -> Callable[[int], int]:
    """A sampler's NFE for n steps, counted once on a zero-cost model."""

    @cache
    def nfe(steps: int) -> int:
        counter = CountingDenoiser(lambda x, sigma: x)
        call(counter, torch.zeros(1, 1, dtype=torch.float64), schedules.karras(steps, 0.1, 10.0), 0)
        return counter.calls

    return nfe


def k_diffusion_methods(grids: list[str]) -> list[Method]:
    """k-diffusion's fixed-grid samplers on each grid, and its adaptive DPM-Solver at several rtol."""
    methods = []
    for name, settings in K_SAMPLERS.items():
        for options, stochastic in settings:
            call = _k_call(name, options)
            nfe = _probe_nfe(call)
            methods += [
                _grid_method("k-diffusion", name, options, grid, stochastic, nfe, call)
                for grid in grids
            ]
    return methods + [_k_adaptive(rtol) for rtol in K_ADAPTIVE_RTOL]


def _k_adaptive(rtol: float) -> Method:
    """DPM-Solver-23 with adaptive steps from sigma_max to sigma_min, then x0 = D(x, sigma_min)."""
    fn = k_diffusion_sampling().sample_dpm_adaptive
    options = {"rtol": rtol, "atol": 0.156 * rtol}  # k-diffusion's default atol / rtol

    def call(model: Denoiser, x: Tensor, process: VPDiscrete, seed: int) -> Tensor:
        x = fn(model, x, process.sigma_min, process.sigma_max, disable=True, **options)
        return model(x, torch.full((len(x),), process.sigma_min, dtype=x.dtype))

    return _adaptive_method("k-diffusion", "dpm_adaptive", {"rtol": rtol}, False, call)


# ------------------------------------------------------------------------------------------------
# diffusers


@dataclass(frozen=True)
class DiffusersAnchor:
    """A diffusers scheduler class with the settings it is tried at."""

    name: str  # class name without "Scheduler"
    sigma_coordinates: bool  # its sample is x = x0 + sigma eps (the k-diffusion ports)
    stochastic: bool
    base: dict[str, Any]  # always on (the best settings)
    settings: list[dict[str, Any]]  # tried one by one on top of base


def _product(*axes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{}]
    for axis in axes:
        out = [{**a, **b} for a in out for b in axis]
    return out


_TRAILING = {"timestep_spacing": "trailing"}
_LINSPACE = {"timestep_spacing": "linspace"}
_KARRAS = {"use_karras_sigmas": True}
_SPACINGS = [_TRAILING, _LINSPACE, _KARRAS]
_ORDERS = [{"solver_order": 2}, {"solver_order": 3}]

# "leading" spacing is left out: it starts below sigma_max, so it cannot share the start.
DIFFUSERS: list[DiffusersAnchor] = [
    DiffusersAnchor(
        "DDIM",
        False,
        False,
        {"clip_sample": False, "set_alpha_to_one": True},
        [_TRAILING, _LINSPACE],
    ),
    DiffusersAnchor("DDPM", False, True, {"clip_sample": False}, [_TRAILING, _LINSPACE]),
    DiffusersAnchor(
        "DPMSolverMultistep",
        False,
        False,
        {"algorithm_type": "dpmsolver++", "lower_order_final": True, "final_sigmas_type": "zero"},
        _product(_ORDERS, [*_SPACINGS, {"use_lu_lambdas": True}]),
    ),
    DiffusersAnchor(
        "DPMSolverSinglestep",
        False,
        False,
        {"algorithm_type": "dpmsolver++", "final_sigmas_type": "zero"},
        _product(_ORDERS, [{}, _KARRAS], [{}, {"lower_order_final": True}]),
    ),
    DiffusersAnchor(
        "UniPCMultistep",
        False,
        False,
        {"final_sigmas_type": "zero"},
        _product(_ORDERS, [{"solver_type": "bh1"}, {"solver_type": "bh2"}], _SPACINGS),
    ),
    DiffusersAnchor("DEISMultistep", False, False, {}, _product(_ORDERS, _SPACINGS)),
    DiffusersAnchor("EulerDiscrete", True, False, {"final_sigmas_type": "zero"}, _SPACINGS),
    DiffusersAnchor("EulerAncestralDiscrete", True, True, {}, [_TRAILING, _LINSPACE]),
    DiffusersAnchor("HeunDiscrete", True, False, {}, _SPACINGS),
    DiffusersAnchor("LMSDiscrete", True, False, {}, _SPACINGS),
]


def _betas(process: VPDiscrete) -> tuple[tuple[str, Any], ...]:
    """diffusers' arguments for the beta table of ``process``."""
    return (
        ("num_train_timesteps", process.num_train_timesteps),
        ("beta_schedule", process.schedule),
        ("beta_start", process.beta_start),
        ("beta_end", process.beta_end),
    )


def _diffusers_method(anchor: DiffusersAnchor, options: dict[str, Any]) -> Method:
    @cache
    def prototype(betas: tuple[tuple[str, Any], ...]) -> Any:
        """A scheduler for these betas; jobs run copies (construction can take 0.1 s: with
        karras sigmas some set 1000 timesteps one by one)."""
        import diffusers

        diffusers.utils.logging.set_verbosity_error()
        cls = getattr(diffusers, f"{anchor.name}Scheduler")
        return cls(**dict(betas), **anchor.base, **options)

    @cache
    def nfe(steps: int) -> int:  # one model call per timestep; the same for any beta table
        scheduler = prototype(_betas(VPDiscrete()))
        scheduler.set_timesteps(steps)
        return len(scheduler.timesteps)

    def prepare(problem: Problem, steps: int, seed: int) -> Job:
        scheduler = copy.deepcopy(prototype(_betas(problem.process)))
        scheduler.set_timesteps(steps)
        table = VPDiscrete(alphas_cumprod=scheduler.alphas_cumprod.double())
        t_start = torch.tensor(float(scheduler.timesteps[0]), dtype=torch.float64)
        sigma_start = float(table.sigma_ve(t_start))
        if not math.isclose(sigma_start, problem.sigma_max, rel_tol=1e-3):
            raise Unsupported(f"{anchor.name} starts at sigma {sigma_start:.6g}, not sigma_max")
        counter = CountingDenoiser(problem.eps_network(table))
        x = problem.x
        start = x if anchor.sigma_coordinates else x / math.sqrt(1 + sigma_start**2)
        takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        generator = torch.Generator(x.device).manual_seed(seed)
        extra = {"generator": generator} if takes_generator else {}

        def run() -> Tensor:
            sample = start
            for t in scheduler.timesteps:
                eps = counter(scheduler.scale_model_input(sample, t), t)
                sample = scheduler.step(eps, t, sample, **extra).prev_sample
            if anchor.sigma_coordinates:
                return sample
            sigma_end = float(scheduler.sigmas[-1]) if hasattr(scheduler, "sigmas") else 0.0
            return sample * math.sqrt(1 + sigma_end**2)

        return Job(run, counter, lambda: scheduler.set_timesteps(steps))

    label = setting_label(options)
    return Method("diffusers", anchor.name, label, "-", anchor.stochastic, within(nfe), prepare)


def diffusers_methods() -> list[Method]:
    """Every diffusers anchor at every setting it is tried at."""
    return [_diffusers_method(a, options) for a in DIFFUSERS for options in a.settings]
