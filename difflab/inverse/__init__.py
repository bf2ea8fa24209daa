"""Deprecated: the old name of :mod:`difflab.restoration` (renamed so that it does not read like
:mod:`difflab.inversion`). Importing it warns once. It re-exports difflab.restoration, and its
submodules (``difflab.inverse.operators``, ``difflab.inverse.restore``, ...) are the restoration
modules themselves, so every object is the same one."""

import importlib
import pkgutil
import sys
import warnings

from difflab import restoration
from difflab.restoration import *  # noqa: F403
from difflab.restoration import __all__  # noqa: F401

warnings.warn(  # stacklevel 2: the importer (warnings skips importlib's own frames)
    "difflab.inverse is deprecated: import difflab.restoration instead",
    DeprecationWarning,
    stacklevel=2,
)

for _module in pkgutil.iter_modules(restoration.__path__):
    _sub = importlib.import_module(f"{restoration.__name__}.{_module.name}")
    sys.modules[f"{__name__}.{_module.name}"] = _sub
    globals().setdefault(_module.name, getattr(restoration, _module.name))
del _module, _sub
