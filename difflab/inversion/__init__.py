"""Layer 2: inversion and editing for any denoiser and grid (DESIGN.md).

    z = inversion.invert(denoiser, x, sigmas, method="edict", cond={"labels": y})
    x_back = inversion.sample(denoiser, z)                         # == x for the exact methods
    edited = inversion.sample(denoiser, z, cond={"labels": other})  # keep style, change class

Methods (``available()``): ``ddim`` (probability-flow inversion, optional fixed-point refinement),
``dpmpp_2m``, ``edict`` and ``bdia`` (algebraically exact), and for guided sampling ``null_text``
and ``direct``. ``get(name).exact`` says which are exact. Editing: :func:`sdedit`, :func:`edit`,
:func:`interpolate` (:func:`slerp` for noise). docs/inversion.md has the math and measured errors.
"""

from difflab.inversion.base import (
    Guide,
    Latent,
    Method,
    available,
    get,
    inversion_grid,
    invert,
    sample,
)
from difflab.inversion.editing import Edit, edit, interpolate, sdedit, slerp

__all__ = [
    "Edit",
    "Guide",
    "Latent",
    "Method",
    "available",
    "edit",
    "get",
    "interpolate",
    "inversion_grid",
    "invert",
    "sample",
    "sdedit",
    "slerp",
]
