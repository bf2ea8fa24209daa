"""A folder of PNG / JPEG images (searched recursively), as one in-memory data set.

Each image is converted to L or RGB and, when a size is given, center-cropped to the target aspect
ratio and resized (bicubic); class labels can come from the first sub-folder under the root.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from difflab.data.dataset import Dataset, from_uint8

__all__ = ["EXTENSIONS", "center_crop_resize", "files", "load"]

EXTENSIONS = (".png", ".jpg", ".jpeg")
_GRAY = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def files(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files under ``folder`` (recursive, hidden entries skipped), in sorted order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    found = [
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    if not found:
        raise ValueError(f"no {'/'.join(EXTENSIONS)} images found under {folder}")
    return sorted(found)


def _size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """(height, width) from an int or a pair."""
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return h, w


def center_crop_resize(image: Image.Image, height: int, width: int) -> Image.Image:
    """The largest centered crop of aspect width / height, resized to (height, width) (bicubic,
    antialiased when shrinking); nothing outside the crop leaks into the result."""
    w, h = image.size
    crop_w, crop_h = min(w, round(h * width / height)), min(h, round(w * height / width))
    left, top = (w - crop_w) // 2, (h - crop_h) // 2
    image = image.crop((left, top, left + crop_w, top + crop_h))
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.BICUBIC)


def _read(path: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image = image.convert(mode)
            return np.asarray(image if size is None else center_crop_resize(image, *size))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None


def _labels(root: Path, paths: list[Path]) -> tuple[list[str], torch.Tensor]:
    """Class names (sorted first sub-folder names) and each image's class index."""
    names = []
    for p in paths:
        parts = p.relative_to(root).parts
        if len(parts) < 2:
            raise ValueError(f"labels=True needs every image in a class sub-folder; {p} is not")
        names.append(parts[0])
    classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    return classes, torch.tensor([index[c] for c in names], dtype=torch.long)


def _mode(paths: list[Path]) -> str:
    """L when every image is grayscale, else RGB (reads only the headers)."""
    for path in paths:
        try:
            with Image.open(path) as image:
                if image.mode not in _GRAY:
                    return "RGB"
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise ValueError(f"cannot read image {path}: {e}") from None
    return "L"


def load(
    folder: str | os.PathLike[str],
    *,
    size: int | tuple[int, int] | None = None,
    mode: str | None = None,
    labels: bool = False,
) -> Dataset:
    """Images x [N, C, H, W] = u / 127.5 - 1 in [-1, 1] (C = 1 for mode "L", 3 for "RGB"; by default L
    when every image is grayscale). ``size`` (int or (H, W)) center-crops and resizes; without it all
    images must share one size. ``labels=True`` takes classes from the sub-folder names, sorted."""
    root = Path(folder)
    paths = files(root)
    if mode not in (None, "L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
    hw = _size(size)
    classes, label_tensor = _labels(root, paths) if labels else (None, None)
    mode = mode or _mode(paths)
    arrays = [_read(p, mode, hw) for p in paths]
    odd = next((i for i, a in enumerate(arrays) if a.shape != arrays[0].shape), None)
    if odd is not None:
        raise ValueError(
            f"images under {root} differ in size ({paths[0]} is {arrays[0].shape[:2]}, "
            f"{paths[odd]} is {arrays[odd].shape[:2]}): pass size= to resize them"
        )
    pixels = np.stack(arrays)
    pixels = pixels[:, None] if pixels.ndim == 3 else pixels.transpose(0, 3, 1, 2)
    return Dataset(
        from_uint8(np.ascontiguousarray(pixels)),
        label_tensor,
        num_classes=len(classes) if classes else None,
        classes=classes,
        name=str(root),
    )
