"""A forecast fan chart as a PNG: per column, the context, the truth, the median forecast and its
50 % / 90 % central bands (the plot probabilistic-forecasting papers show, e.g. Tashiro et al. 2021)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from difflab.utils.images import save_png

__all__ = ["plot_forecast"]

_BAND90, _BAND50, _MEDIAN = (198, 219, 239), (107, 174, 214), (8, 81, 156)


def plot_forecast(
    history: Tensor,
    paths: Tensor,
    path: str | os.PathLike[str],
    *,
    truth: Tensor | None = None,
    columns: Sequence[str] = (),
    title: str = "",
) -> None:
    """Write (atomically) one panel per column of ``history`` [C, K] followed by the forecast
    ``paths`` [S, H, K]: median line, 50 % and 90 % bands, and ``truth`` [H, K] when given."""
    if history.ndim != 2 or paths.ndim != 3 or paths.shape[2] != history.shape[1]:
        raise ValueError(
            f"plot_forecast needs history [C, K] and paths [S, H, K], got {list(history.shape)} and "
            f"{list(paths.shape)}"
        )
    c, k = history.shape
    h = paths.shape[1]
    levels = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)
    q = torch.quantile(paths.double(), levels, dim=0)  # [5, H, K]
    width, panel, left, right, top = 900, 150, 70, 20, 36 if title else 12
    height = top + k * panel + 30
    image = Image.new("RGB", (width, height), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=13)
    if title:
        draw.text((width / 2, 10), title, fill="black", font=font, anchor="mt")
    names = list(columns) or [f"column {i}" for i in range(k)]
    for j in range(k):
        y0, y1 = top + j * panel + 8, top + (j + 1) * panel - 8
        series = [history[:, j].double(), q[:, :, j].flatten()]
        if truth is not None:
            series.append(truth[:, j].double())
        lo, hi = float(torch.cat(series).min()), float(torch.cat(series).max())
        hi = hi if hi > lo else lo + 1.0

        def px(t: float, v: float, y0: float = y0, y1: float = y1, lo: float = lo, hi: float = hi):
            x = left + t / (c + h - 1) * (width - left - right)
            return x, y1 - (v - lo) / (hi - lo) * (y1 - y0)

        draw.rectangle([left, y0, width - right, y1], outline=(200, 200, 200))
        steps = range(c, c + h)
        for low, high, color in ((0, 4, _BAND90), (1, 3, _BAND50)):
            upper = [px(t, float(q[high, t - c, j])) for t in steps]
            lower = [px(t, float(q[low, t - c, j])) for t in reversed(steps)]
            draw.polygon(upper + lower, fill=color)
        draw.line([px(t, float(history[t, j])) for t in range(c)], fill="black", width=2)
        if truth is not None:
            draw.line([px(t, float(truth[t - c, j])) for t in steps], fill="black", width=1)
        draw.line([px(t, float(q[2, t - c, j])) for t in steps], fill=_MEDIAN, width=2)
        draw.line([px(c - 0.5, lo), px(c - 0.5, hi)], fill=(150, 150, 150))
        draw.text((left - 6, (y0 + y1) / 2), names[j], fill="black", font=font, anchor="rm")
    legend = "black: history and truth   dark blue: median   bands: 50 % and 90 % intervals"
    draw.text((left, height - 18), legend, fill="black", font=font)
    save_png(image, path)
