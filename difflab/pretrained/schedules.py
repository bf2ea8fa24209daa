"""Deprecated import path: saved step grids live in :mod:`difflab.pretrained.grids`."""

from difflab.pretrained.grids import *  # noqa: F403
from difflab.pretrained.grids import __all__  # noqa: F401
