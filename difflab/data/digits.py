"""scikit-learn's bundled 8x8 handwritten digits (UCI optical recognition of handwritten digits).

The data is the CSV file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``: 1797 rows of 64
pixel values in 0..16 followed by the label), the same file ``sklearn.datasets.load_digits`` reads.
It is located without importing scikit-learn (which would import scipy, about a second).
"""

from __future__ import annotations

import gzip
import importlib.util
import zlib
from pathlib import Path

import numpy as np
import torch

from difflab.data.dataset import Dataset, check_split

__all__ = ["csv_path", "load"]

_CSV = Path("datasets") / "data" / "digits.csv.gz"


def csv_path() -> Path:
    """Where scikit-learn's digits CSV lies; ImportError naming the package to install otherwise."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / _CSV
        if path.is_file():
            return path
    raise ImportError(
        "the digits data set is the CSV file bundled with scikit-learn, which is not installed: "
        "pip install scikit-learn (or difflab's 'data' extra: pip install 'difflab[data]')"
    )


def load(split: str = "train") -> Dataset:
    """The 1797 digits x [1797, 1, 8, 8] = v / 8 - 1 in [-1, 1] (v in 0..16), labels 0-9
    (Alpaydin & Kaynak, 1998). There is one split, "train", holding all of them."""
    check_split("digits", split, ("train",))
    path = csv_path()
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (EOFError, OSError, zlib.error, ValueError) as e:
        raise ValueError(f"cannot read the digits CSV {path}: {e}") from None
    if table.shape[1] != 65 or table[:, :64].min() < 0 or table[:, :64].max() > 16:
        raise ValueError(f"{path}: expected rows of 64 pixels in 0..16 and a label")
    x = torch.from_numpy(table[:, :64].reshape(-1, 1, 8, 8)).to(torch.float32) / 8 - 1
    return Dataset(x, torch.from_numpy(table[:, 64].copy()), num_classes=10, name="digits")
