"""Step grids (noise-level schedules) for samplers: ``get(name)(steps, sigma_min, sigma_max, process=...)``.

A re-export of :mod:`difflab.core.grids`; see there for the conventions every grid follows.
"""

from difflab.core.grids import (
    Grid,
    available,
    ays,
    beta,
    ddim_uniform,
    explicit,
    exponential,
    flow,
    get,
    karras,
    kl_optimal,
    laplace,
    linear_quadratic,
    polyexponential,
    sgm_uniform,
    simple,
    uniform_t,
    vp,
)
from difflab.schedules.optimize import OptimizedGrid, optimize, optimize_family  # noqa: F401

__all__ = [
    "Grid",
    "available",
    "ays",
    "beta",
    "ddim_uniform",
    "explicit",
    "exponential",
    "flow",
    "get",
    "karras",
    "kl_optimal",
    "laplace",
    "linear_quadratic",
    "polyexponential",
    "sgm_uniform",
    "simple",
    "uniform_t",
    "vp",
]
