"""Line charts drawn with Pillow (matplotlib is not a dependency): y against x on a log axis, one
coloured line per series, as the NFE sweeps and the fine-tuning curves plot them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = ["COLORS", "log_x_chart"]

COLORS = [  # Tableau 10
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Values m 10^k (m = 1, 2, 5) with log10 in [lo, hi]; only the powers of ten when those are
    more than ten."""
    ticks = [
        (m, m * 10.0**k)
        for k in range(math.floor(lo) - 1, math.ceil(hi) + 1)
        for m in (1, 2, 5)
        if lo - 1e-9 <= math.log10(m * 10.0**k) <= hi + 1e-9
    ]
    return [t for m, t in ticks if m == 1 or len(ticks) <= 10]


def _linear_ticks(lo: float, hi: float) -> list[float]:
    """About five round values (1, 2 or 5 times a power of ten apart) in [lo, hi]."""
    raw = (hi - lo) / 5
    base = 10.0 ** math.floor(math.log10(raw))
    step = next(m * base for m in (1, 2, 5, 10) if m * base >= raw)
    return [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    """Tick values of an axis over [lo, hi] (log10 of the values when ``log``): 1, 2, 5 times powers
    of ten, or round values evenly apart where fewer than two of those fit."""
    if not log:
        return _linear_ticks(lo, hi)
    ticks = _log_ticks(lo, hi)
    return ticks if len(ticks) > 1 else [t for t in _linear_ticks(10**lo, 10**hi) if t > 0]


def _span(values: list[float]) -> tuple[float, float]:
    """An axis range around the values with 5% margins (a unit wide one around a single value)."""
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 if hi > lo else 0.5
    return lo - pad, hi + pad


def log_x_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    x_label: str,
    y_label: str,
    title: str = "",
    log_y: bool | None = None,
    x_ticks: Sequence[float] | None = None,
) -> Image.Image:
    """A chart of the points (x > 0, y) of each series joined in order of x on a log10 x axis, one
    colour and legend entry per series; y on a log axis too when ``log_y`` (default: when every y
    is positive). ``x_ticks``: the x values to mark (default: 1, 2, 5 times powers of ten, or
    round values on a range too narrow for two of them)."""
    points = [p for values in series.values() for p in values]
    if not points:
        raise ValueError("no points to plot")
    if any(not x > 0 for x, _ in points):
        raise ValueError("a log x axis needs every x > 0")
    log_y = all(y > 0 for _, y in points) if log_y is None else log_y
    fy = math.log10 if log_y else float
    xs, ys = _span([math.log10(x) for x, _ in points]), _span([fy(y) for _, y in points])
    width, height = 760, 480
    left, right, top, bottom = 80, width - 190, 40, height - 60
    font = ImageFont.load_default(size=14)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    def px(x: float, y: float) -> tuple[float, float]:
        u = (math.log10(x) - xs[0]) / (xs[1] - xs[0])
        v = (fy(y) - ys[0]) / (ys[1] - ys[0])
        return left + u * (right - left), bottom - v * (bottom - top)

    for t in _ticks(*xs, log=True) if x_ticks is None else x_ticks:
        x, _ = px(t, 10.0 ** ys[0] if log_y else ys[0])
        draw.line([(x, top), (x, bottom)], fill=(225, 225, 225))
        draw.text((x, bottom + 6), f"{t:g}", fill="black", font=font, anchor="mt")
    for t in _ticks(*ys, log=log_y):
        _, y = px(10.0 ** xs[0], t)
        draw.line([(left, y), (right, y)], fill=(225, 225, 225))
        draw.text((left - 6, y), f"{t:g}", fill="black", font=font, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(
        ((left + right) / 2, height - 22),
        f"{x_label} (log scale)",
        fill="black",
        font=font,
        anchor="mm",
    )
    draw.text((8, top - 22), y_label + (" (log scale)" if log_y else ""), fill="black", font=font)
    if title:
        draw.text(((left + right) / 2, 10), title, fill="black", font=font, anchor="mt")
    for i, (name, values) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        xy = [px(x, y) for x, y in sorted(values)]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=2, joint="curve")
        for x, y in xy:
            draw.ellipse([x - 3.5, y - 3.5, x + 3.5, y + 3.5], fill=color)
        ly = top + 8 + 20 * i
        draw.line([(right + 14, ly), (right + 40, ly)], fill=color, width=3)
        draw.text((right + 46, ly), name, fill="black", font=font, anchor="lm")
    return image
