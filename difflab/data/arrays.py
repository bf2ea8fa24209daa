"""Data sets stored as NumPy arrays: a .npy file, or a .npz file with 'images', 'samples' or 'x' (and
optional 'labels' and 'context', one float row per sample). Read with allow_pickle=False: a file
holding Python objects is refused.

uint8 arrays are images: [N, H, W] gains a channel axis, [N, H, W, C] (C in 1, 3, 4) becomes
[N, C, H, W], and pixels map to [-1, 1]. Any other numeric array is taken as given (float32).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from difflab.core.tensors import check_finite
from difflab.data.dataset import Dataset, from_uint8

__all__ = [
    "CONTEXT_KEY",
    "DATA_KEYS",
    "LABEL_KEY",
    "check_signature",
    "load",
    "read_arrays",
    "read_context",
    "reading_errors",
]

DATA_KEYS = ("images", "samples", "x")  # difflab sample writes images (uint8) or samples
LABEL_KEY = "labels"
CONTEXT_KEY = "context"
_CHANNELS = (1, 3, 4)
_SIGNATURES = {".npy": (b"\x93NUMPY",), ".npz": (b"PK\x03\x04", b"PK\x05\x06")}  # npy, zip


def _samples(data: np.ndarray, path: Path) -> torch.Tensor:
    if data.dtype == np.uint8:
        if data.ndim == 3:
            data = data[:, None]
        elif data.ndim == 4 and data.shape[-1] in _CHANNELS and data.shape[1] not in _CHANNELS:
            data = data.transpose(0, 3, 1, 2)
        return from_uint8(np.ascontiguousarray(data))
    if data.dtype.kind not in "iuf":
        raise ValueError(f"{path}: data must be numeric, got dtype {data.dtype}")
    x = check_finite(torch.from_numpy(data.astype(np.float32)), f"{path} data")
    return x[:, None] if x.ndim == 1 else x


def check_signature(path: Path, suffixes: tuple[str, ...] = (".npy", ".npz")) -> str:
    """The lower-case suffix of ``path``, after checking it is one of ``suffixes``, that the file
    exists and that it starts with that NumPy format's signature (ValueError, FileNotFoundError)."""
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        raise ValueError(f"{path}: expected a {' or '.join(suffixes)} file")
    if not path.is_file():
        raise FileNotFoundError(f"array file {path} does not exist")
    with path.open("rb") as f:
        if not f.read(6).startswith(_SIGNATURES[suffix]):
            raise ValueError(
                f"{path} is not a NumPy {suffix} file (it lacks the format's signature)"
            )
    return suffix


@contextmanager
def reading_errors(path: Path) -> Iterator[None]:
    """Turn what NumPy raises on a pickled, damaged or incomplete file (read with
    allow_pickle=False) into a one-line ValueError naming ``path``; a LookupError inside is a
    missing array."""
    try:
        yield
    except LookupError as e:
        raise ValueError(str(e)) from None
    except ValueError as e:
        if "pickle" in str(e):
            raise ValueError(
                f"{path} holds pickled Python objects (object arrays), which difflab never loads"
            ) from None
        raise ValueError(f"cannot read {path}: {e}") from None
    except Exception as e:  # NumPy's header parser raises SyntaxError, TokenError, ... on damage
        raise ValueError(f"cannot read {path}: {type(e).__name__}: {e}") from None


def read_arrays(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """(samples [N, ...], labels or None) of a .npy file, or of a .npz file's first array named in
    DATA_KEYS and its "labels"; read without pickle, every defect a ValueError naming the file."""
    path = Path(path)
    suffix = check_signature(path)
    with reading_errors(path):
        if suffix == ".npy":
            data, labels = np.load(path, allow_pickle=False), None
        else:
            with np.load(path, allow_pickle=False) as archive:
                key = next((k for k in DATA_KEYS if k in archive.files), None)
                if key is None:
                    raise LookupError(
                        f"{path} has arrays {archive.files} but none named {' or '.join(DATA_KEYS)}"
                    )
                data = archive[key]
                labels = archive[LABEL_KEY] if LABEL_KEY in archive.files else None
    if data.ndim == 0 or len(data) == 0:
        raise ValueError(f"{path}: expected samples [N, ...] with N >= 1, got shape {data.shape}")
    if labels is not None and labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: labels must be integers, got dtype {labels.dtype}")
    if labels is not None and labels.shape != data.shape[:1]:
        raise ValueError(f"{path}: {len(data)} samples but labels of shape {labels.shape}")
    return data, labels


def read_context(path: str | os.PathLike[str]) -> np.ndarray | None:
    """The "context" array of a .npz file (None for a .npy file or without one), read without
    pickle."""
    path = Path(path)
    if check_signature(path) != ".npz":
        return None
    with reading_errors(path), np.load(path, allow_pickle=False) as archive:
        context = archive[CONTEXT_KEY] if CONTEXT_KEY in archive.files else None
    if context is not None and context.dtype.kind not in "iuf":
        raise ValueError(f"{path}: context must be numeric, got dtype {context.dtype}")
    return context


def load(path: str | os.PathLike[str]) -> Dataset:
    """The samples (labels, context) of a .npy / .npz file: uint8 images to [-1, 1], other numbers
    as given."""
    data, labels = read_arrays(path)
    context = read_context(path)
    return Dataset(
        _samples(data, Path(path)),
        None if labels is None else torch.from_numpy(labels.astype(np.int64)),
        name=str(path),
        context=None if context is None else torch.from_numpy(context.astype(np.float32)),
    )
