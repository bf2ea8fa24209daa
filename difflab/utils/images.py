"""PNG figures without a plotting library: heat maps, scatter plots and labelled panels (Pillow only)."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from difflab.utils.files import atomic_write_bytes

__all__ = ["colormap", "image_grid", "panels", "save_png", "scatter"]

# a perceptually ordered dark-to-bright ramp (close to matplotlib's "magma")
_RAMP = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float64,
)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 along the ramp."""
    v = np.clip(np.nan_to_num(values), 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_RAMP) - 2)
    w = (v - lo)[..., None]
    return ((1 - w) * _RAMP[lo] + w * _RAMP[lo + 1]).round().astype(np.uint8)


def scatter(
    points: np.ndarray, extent: tuple[float, float, float, float], size: int = 320
) -> np.ndarray:
    """An RGB image of 2-D points (dark dots on white) over extent = (xmin, xmax, ymin, ymax)."""
    xmin, xmax, ymin, ymax = extent
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    col = ((points[:, 0] - xmin) / (xmax - xmin) * (size - 1)).round().astype(int)
    row = ((ymax - points[:, 1]) / (ymax - ymin) * (size - 1)).round().astype(int)
    inside = (col >= 0) & (col < size - 1) & (row >= 0) & (row < size - 1)
    for dr in (0, 1):
        for dc in (0, 1):
            img[row[inside] + dr, col[inside] + dc] = (30, 60, 160)
    return img


def panels(images: list[tuple[str, np.ndarray]], caption: str = "") -> Image.Image:
    """Place RGB arrays side by side, each under its title, with an optional caption below."""
    font = ImageFont.load_default(size=14)
    pad, head = 10, 24
    h = max(a.shape[0] for _, a in images)
    w = sum(a.shape[1] for _, a in images) + pad * (len(images) + 1)
    foot = 22 if caption else 0
    canvas = Image.new("RGB", (w, h + head + pad + foot), "white")
    draw = ImageDraw.Draw(canvas)
    x = pad
    for title, arr in images:
        draw.text((x, 4), title, fill="black", font=font)
        canvas.paste(Image.fromarray(arr), (x, head))
        x += arr.shape[1] + pad
    if caption:
        draw.text((pad, h + head + 4), caption, fill=(60, 60, 60), font=font)
    return canvas


def image_grid(
    images: np.ndarray,
    nrow: int | None = None,
    titles: list[str] | None = None,
    scale: int = 2,
    pad: int = 2,
) -> Image.Image:
    """Tile uint8 images [N, H, W] or [N, C, H, W] (C = 1 or 3) into rows of ``nrow``, each enlarged
    ``scale`` times, with an optional title per row (e.g. its class label) at the left."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 images [N, H, W] or [N, 1|3, H, W], got {images.dtype} {images.shape}"
        )
    n, _, h, w = images.shape
    nrow = nrow or max(1, int(np.ceil(np.sqrt(n))))
    rows = -(-n // nrow)
    tiles = np.repeat(np.repeat(images.transpose(0, 2, 3, 1), scale, 1), scale, 2)
    if tiles.shape[-1] == 1:
        tiles = np.repeat(tiles, 3, -1)
    th, tw = h * scale + pad, w * scale + pad
    left = 28 if titles else 0
    canvas = np.full((rows * th + pad, left + nrow * tw + pad, 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, nrow)
        canvas[pad + r * th : (r + 1) * th, left + pad + c * tw : left + (c + 1) * tw] = tile
    image = Image.fromarray(canvas)
    if titles:
        draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=14)
        for r, title in enumerate(titles[:rows]):
            draw.text((4, pad + r * th + (th - 16) // 2), title, fill="black", font=font)
    return image


def save_png(image: Image.Image, path: str | os.PathLike[str]) -> None:
    """Write a PNG atomically."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
