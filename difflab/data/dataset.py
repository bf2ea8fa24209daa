"""The in-memory data set every loader returns, 8-bit pixel conversion (:mod:`difflab.utils.pixels`),
and where shared data lives.

A data set holds all of its samples as one tensor; a training loop draws index batches itself::

    x, labels = data[torch.randint(len(data), (B,), generator=g)]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from difflab.core.tensors import check_finite
from difflab.utils.pixels import from_uint8, to_uint8

__all__ = ["DATA_ENV", "Dataset", "check_split", "from_uint8", "shared_folder", "to_uint8"]

DATA_ENV = "DIFFLAB_DATA"  # the folder holding shared data sets (mnist/, ...)
_REPO_ROOT = Path(__file__).resolve().parents[2]


class Dataset:
    """Samples x [N, ...] (float32; images in [-1, 1]) with optional class labels [N] (int64) and an
    optional context per sample [N, ...] (float32: an observation, a goal, a context window; what a
    conditional network takes as ``context=``).

    ``num_classes`` is 0 for unlabelled data; ``classes`` optionally names each class index.
    """

    def __init__(
        self,
        x: Tensor,
        labels: Tensor | None = None,
        *,
        num_classes: int | None = None,
        classes: Sequence[str] | None = None,
        name: str = "data",
        context: Tensor | None = None,
    ) -> None:
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"{name}: samples must be [N, ...] with N >= 1, got {tuple(x.shape)}")
        self.name = name
        self.x = x.to(torch.float32)
        self.classes = list(classes) if classes is not None else None
        self.context = None
        if context is not None:
            context = torch.as_tensor(context)
            if context.ndim < 2 or len(context) != len(x) or not context.is_floating_point():
                raise ValueError(
                    f"{name}: {len(x)} samples need a float context [{len(x)}, ...], got "
                    f"{context.dtype} of shape {tuple(context.shape)}"
                )
            self.context = check_finite(context.to(torch.float32), f"{name} context")
        if labels is None:
            self.labels, self.num_classes = None, 0
            return
        labels = torch.as_tensor(labels)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"{name}: labels must be integers, got {labels.dtype}")
        if labels.shape != (len(x),):
            raise ValueError(
                f"{name}: {len(x)} samples but labels of shape {tuple(labels.shape)} "
                f"(expected [{len(x)}])"
            )
        self.labels = labels.to(torch.long)
        low, high = int(self.labels.min()), int(self.labels.max())
        self.num_classes = high + 1 if num_classes is None else num_classes
        if low < 0 or high >= self.num_classes:
            raise ValueError(
                f"{name}: labels span [{low}, {high}], outside [0, {self.num_classes - 1}]"
            )

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample, e.g. (1, 28, 28)."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, idx: Tensor | int | slice) -> tuple[Tensor, Tensor | None]:
        """(x[idx], labels[idx]) for a LongTensor of indices (labels None when unlabelled)."""
        return self.x[idx], None if self.labels is None else self.labels[idx]

    def to(self, device: torch.device | str) -> Dataset:
        """The same data set with its tensors on ``device``."""
        labels = None if self.labels is None else self.labels.to(device)
        return Dataset(
            self.x.to(device),
            labels,
            num_classes=self.num_classes if labels is not None else None,
            classes=self.classes,
            name=self.name,
            context=None if self.context is None else self.context.to(device),
        )

    def __repr__(self) -> str:
        classes = f", {self.num_classes} classes" if self.labels is not None else ""
        if self.context is not None:
            classes += f", context {tuple(self.context.shape[1:])}"
        return f"Dataset({self.name!r}, {len(self)} x {self.shape}{classes})"


def check_split(name: str, split: str, valid: Sequence[str]) -> None:
    """Raise a ValueError naming the data set's splits when ``split`` is not one of them."""
    if split not in valid:
        raise ValueError(
            f"data set {name!r} has split(s) {', '.join(map(repr, valid))}; got {split!r}"
        )


def shared_folder(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding data set ``name``: ``root`` when given, else ``$DIFFLAB_DATA/name``, else
    ``<repo>/../shared/data/name`` (CI clones the repository beside ``shared/``).

    Raises FileNotFoundError saying where it looked.
    """
    if root is not None:
        candidates = [Path(root)]
    else:
        candidates = [_REPO_ROOT.parent / "shared" / "data" / name]
        if os.environ.get(DATA_ENV):
            candidates.insert(0, Path(os.environ[DATA_ENV]) / name)
    for folder in candidates:
        if folder.is_dir():
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"{name} data not found: looked in {looked}; pass root=<folder> or set {DATA_ENV} to the "
        f"folder holding {name}/"
    )
