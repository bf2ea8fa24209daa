"""MNIST from its original idx files (gzip-compressed or raw), read with one np.frombuffer per file.

The idx format (LeCun et al., 1998): a 4-byte magic number 0x0000TTDD (TT the element type, DD the number
of dimensions), DD big-endian uint32 sizes, then the elements in C order, big-endian.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from difflab.data.dataset import DATA_ENV, Dataset, check_split, from_uint8, shared_folder

__all__ = ["FILES", "IMAGES_MAGIC", "LABELS_MAGIC", "load", "read_idx"]

_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IMAGES_MAGIC = 0x00000803  # uint8, 3-D [N, H, W]
LABELS_MAGIC = 0x00000801  # uint8, 1-D [N]
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | os.PathLike[str], magic: int | None = None) -> np.ndarray:
    """The array stored in an idx file (gzip detected by its signature); ``magic`` is checked when
    given. Every defect is a ValueError naming the file."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as e:
            raise ValueError(f"{path} is a truncated or corrupt gzip file ({e})") from None
    if len(data) < 4:
        raise ValueError(f"{path} is too short ({len(data)} bytes) to hold an idx header")
    found = int.from_bytes(data[:4], "big")
    ndim, type_code = data[3], data[2]
    if data[:2] != b"\0\0" or type_code not in _TYPES or (magic is not None and found != magic):
        expected = f"0x{magic:08X}" if magic is not None else "0x0000TTDD with TT in 08/09/0B-0E"
        raise ValueError(f"{path}: wrong idx magic number 0x{found:08X} (expected {expected})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: {len(data)} bytes cannot hold the {header}-byte idx header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_TYPES[type_code])
    expected_size = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected_size:
        raise ValueError(
            f"{path}: header says shape {shape} ({expected_size} bytes) but the file holds "
            f"{len(data)} bytes"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"MNIST file {stem}[.gz] not found in {folder}; pass root=<folder> or set {DATA_ENV} to "
        "the folder holding mnist/"
    )


def load(split: str = "train", *, root: str | os.PathLike[str] | None = None) -> Dataset:
    """MNIST digits x [N, 1, 28, 28] in [-1, 1], labels 0-9 (LeCun et al., 1998): 60000 train, 10000 test.

    ``root`` is the folder holding the idx files; by default ``$DIFFLAB_DATA/mnist`` or the
    repository's ``../shared/data/mnist``.
    """
    check_split("mnist", split, tuple(FILES))
    folder = shared_folder("mnist", root)
    image_path, label_path = (_find(folder, stem) for stem in FILES[split])
    images = read_idx(image_path, IMAGES_MAGIC)
    labels = read_idx(label_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise ValueError(
            f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels"
        )
    if len(labels) and int(labels.max()) > 9:
        raise ValueError(f"{label_path}: labels must be digits 0-9, found {int(labels.max())}")
    return Dataset(
        from_uint8(images[:, None]),
        torch.from_numpy(labels.astype(np.int64)),
        num_classes=10,
        name=f"mnist/{split}",
    )
