"""Other libraries' samplers as anchors: k-diffusion's ``sampling`` module loaded without its package
``__init__`` (which needs torchvision, which has no CPU build here)."""

from __future__ import annotations

import contextlib
import functools
import importlib.machinery
import importlib.util
import itertools
import sys
import types
from collections.abc import Iterator
from pathlib import Path

__all__ = ["k_diffusion_sampling"]


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


@functools.cache
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
