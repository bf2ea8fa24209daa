"""Data sets held in memory as tensors: ``load(name_or_path, split="train", **options)``.

Names (see :func:`available`): "mnist" (option ``root``), "digits", and the 2-D toys "moons",
"swiss_roll", "checkerboard", "rings", "8gaussians", "25gaussians" (options ``n``, ``seed``). Any
other argument is a path: a folder of PNG / JPEG images (options ``size``, ``mode``, ``labels``) or a
.npy / .npz file. Names win over paths: write ``./mnist`` for a folder called mnist.

Every loader returns a :class:`Dataset`: ``x`` float32 [N, ...] (images in [-1, 1]), ``labels``
[N] int64 or None, ``num_classes``, ``shape`` (one sample's), and ``data[idx] -> (x, labels)``.

Also here: demonstrations for policies (:class:`Demos`, read with ``Demos.load``, windowed by
``Demos.windows``) and per-dimension :class:`Normalizer`s.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from difflab.core.tensors import unknown_name
from difflab.data import arrays, digits, images, mnist, toys
from difflab.data.dataset import DATA_ENV, Dataset, from_uint8, to_uint8
from difflab.data.demos import Demos, Windows
from difflab.data.normalization import Normalizer

__all__ = [
    "DATA_ENV",
    "Dataset",
    "Demos",
    "Normalizer",
    "Windows",
    "arrays",
    "available",
    "digits",
    "from_uint8",
    "images",
    "load",
    "mnist",
    "to_uint8",
    "toys",
]

_NAMED: dict[str, Callable[..., Dataset]] = {
    "mnist": mnist.load,
    "digits": digits.load,
    **{name: partial(toys.load, name) for name in toys.TOYS},
}


def available() -> list[str]:
    """The data-set names :func:`load` accepts (besides paths)."""
    return sorted(_NAMED)


def _call(what: str, loader: Callable[..., Dataset], *args: Any, **options: Any) -> Dataset:
    """loader(*args, **options), with unknown options named in a ValueError."""
    valid = [
        p.name
        for p in inspect.signature(loader).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"{what} takes the options {', '.join(valid) or '(none)'}; got {', '.join(unknown)}"
        )
    return loader(*args, **options)


def load(name_or_path: str | os.PathLike[str], split: str = "train", **options: Any) -> Dataset:
    """The data set called ``name_or_path`` (see :func:`available`), or the images / arrays at that
    path (which have the one split "train")."""
    key = str(name_or_path)
    if isinstance(name_or_path, str) and key.lower() in _NAMED:
        return _call(f"data set {key!r}", _NAMED[key.lower()], split, **options)
    path = Path(name_or_path)
    is_path = path.exists() or path.suffix or os.sep in key or not isinstance(name_or_path, str)
    if not is_path:
        raise unknown_name("data set", key, available())
    if split != "train":
        raise ValueError(f"{path} is one set of data (split 'train'); got split {split!r}")
    if not path.exists():
        raise FileNotFoundError(f"data set path {path} does not exist")
    if path.is_dir():
        return _call(f"image folder {path}", images.load, path, **options)
    if path.suffix.lower() in (".npy", ".npz"):
        return _call(f"array file {path}", arrays.load, path, **options)
    raise ValueError(f"{path}: not a data set (expected a folder of images or a .npy / .npz file)")
