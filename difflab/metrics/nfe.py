"""Samplers compared at equal numbers of denoiser evaluations (NFE): ``bench_nfe`` samples a model
with several samplers at each NFE budget and measures the Fréchet distance of their samples to a
reference; ``format_table`` and ``plot_nfe`` show the result.

The model is anything with the members of :class:`SamplingModel`, as
:class:`difflab.pretrained.Model` has (metrics sit below saved models in the layers of DESIGN.md, so
they take a model, never load one).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from difflab import data, sampling
from difflab.metrics.classifier import mnist_features
from difflab.metrics.evaluate import check_same_kind, load_reference
from difflab.metrics.frechet import frechet_from_stats, gaussian_stats
from difflab.utils.images import save_png

__all__ = ["NfeRow", "SamplingModel", "bench_nfe", "format_table", "plot_nfe", "steps_for_nfe"]


class SamplingModel(Protocol):
    """What :func:`bench_nfe` needs of a model: its ``name``, the ``shape`` of one sample, its
    ``config`` (whose "data" section names the training data), its default step ``grid()``, and
    ``generate(n, sampler=, steps=, guidance=, seed=)`` returning samples ``x`` with the ``nfe``
    spent and the ``seconds`` taken."""

    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def config(self) -> dict[str, Any]: ...

    def grid(self) -> Tensor: ...

    def generate(self, n: int, *, sampler: str, steps: int, guidance: float, seed: int) -> Any: ...


@dataclass(frozen=True)
class NfeRow:
    """One point of an NFE benchmark: a sampler run for ``steps`` steps, spending ``nfe`` denoiser
    evaluations per sample, the Fréchet distance ``fd`` of its samples to the reference, and the
    sampling time in seconds."""

    sampler: str
    nfe: int
    steps: int
    fd: float
    seconds: float


def steps_for_nfe(sampler: str, nfe: int, infinite_start: bool = False) -> int | None:
    """The step count whose NFE (the sampler registry's count) is exactly ``nfe``, or None where
    no step count spends exactly that many (e.g. an even NFE for Heun, 2 steps - 1)."""
    return sampling.info(sampler).steps_for(nfe, infinite_start, exact=True)


def _default_reference(model: SamplingModel) -> str:
    name = str(model.config["data"].get("name", "")).split("/")[0]
    if name not in data.available():
        raise ValueError(
            f"{model.name} was trained on {name!r}, not a named data set: pass reference= "
            "(a data set split such as 'mnist-test', or a path)"
        )
    return f"{name}-test"


def _features(shape: tuple[int, ...]) -> Callable[[Tensor], Tensor]:
    """The feature map the Fréchet distance is taken in: the MNIST classifier's for images, the
    identity for vectors."""
    if len(shape) == 1:
        return lambda x: x.double()
    return lambda x: mnist_features(x)[0]


def bench_nfe(
    model: SamplingModel,
    samplers: Sequence[str],
    nfes: Sequence[int],
    n: int = 500,
    guidance: float = 1.0,
    seed: int = 0,
    *,
    reference: str | os.PathLike[str] | Tensor | None = None,
    reference_n: int = 10_000,
) -> list[NfeRow]:
    """Fréchet distance of n samples per (sampler, NFE budget): each sampler runs the step count
    whose NFE equals the budget exactly (:func:`steps_for_nfe`; budgets it cannot meet are left
    out), from the same seeded noise, on the model's default step grid; images are quantized to
    8 bits first. Reference: ``reference_n`` samples of ``reference`` (default: the test split of
    the model's training data). ``model``: a loaded model (:class:`SamplingModel`), e.g.
    ``difflab.load("mnist")``."""
    if isinstance(model, str | os.PathLike):
        raise TypeError(f"bench_nfe takes a model, not a path: pass difflab.load({str(model)!r})")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (a covariance needs 2 samples), got {n!r}")
    bad = [b for b in nfes if isinstance(b, bool) or not isinstance(b, int) or b < 1]
    if bad or not nfes:
        raise ValueError(f"NFE budgets must be positive integers, got {list(nfes)}")
    if not samplers:
        raise ValueError("name at least one sampler")
    infinite = math.isinf(float(model.grid()[0]))  # such a start may cost one more evaluation
    plan = [
        (name, budget, steps_for_nfe(name, budget, infinite))
        for name in samplers
        for budget in nfes
    ]
    ref = load_reference(reference or _default_reference(model), reference_n)
    features = _features(model.shape)
    probe = torch.zeros(2, *model.shape)
    check_same_kind(probe, ref, f"{model.name}'s samples")
    features(probe)  # images the feature network cannot take fail here, before any sampling
    ref_stats = gaussian_stats(features(ref))
    rows = []
    for name, budget, steps in plan:
        if steps is None:
            continue
        result = model.generate(n, sampler=name, steps=steps, guidance=guidance, seed=seed)
        if result.nfe != budget:
            raise RuntimeError(
                f"{name} spent {result.nfe} NFE in {steps} steps, but its registry entry says "
                f"{budget}"
            )
        x = result.x if len(model.shape) == 1 else data.to_uint8(result.x)
        fd = frechet_from_stats(*gaussian_stats(features(x)), *ref_stats)
        rows.append(NfeRow(name, budget, steps, fd, result.seconds))
    return rows


def format_table(rows: Sequence[NfeRow]) -> str:
    """The rows as an aligned text table: sampler, NFE, steps, FD, seconds."""
    header = ("sampler", "NFE", "steps", "FD", "seconds")
    body = [(r.sampler, str(r.nfe), str(r.steps), f"{r.fd:.4g}", f"{r.seconds:.2f}") for r in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))])

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, body)])


# ---- the plot: a log-x line chart drawn with Pillow (matplotlib is not a dependency) ----

_COLORS = [  # Tableau 10
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


def _span(values: list[float]) -> tuple[float, float]:
    """An axis range around the values with 5% margins (a unit wide one around a single value)."""
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 if hi > lo else 0.5
    return lo - pad, hi + pad


def plot_nfe(rows: Sequence[NfeRow], path: str | os.PathLike[str], title: str = "") -> None:
    """Write a PNG (atomically) of Fréchet distance against NFE on a log axis, one line per
    sampler; the FD axis is logarithmic too when every FD is positive."""
    if not rows:
        raise ValueError("no rows to plot (no sampler could meet any of the NFE budgets)")
    samplers = list(dict.fromkeys(r.sampler for r in rows))
    log_y = all(r.fd > 0 for r in rows)
    fy = math.log10 if log_y else float
    xs, ys = _span([math.log10(r.nfe) for r in rows]), _span([fy(r.fd) for r in rows])
    width, height = 760, 480
    left, right, top, bottom = 80, width - 190, 40, height - 60
    font = ImageFont.load_default(size=14)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    def px(nfe: float, fd: float) -> tuple[float, float]:
        u = (math.log10(nfe) - xs[0]) / (xs[1] - xs[0])
        v = (fy(fd) - ys[0]) / (ys[1] - ys[0])
        return left + u * (right - left), bottom - v * (bottom - top)

    budgets = sorted({r.nfe for r in rows})
    for t in budgets if len(budgets) <= 12 else _log_ticks(*xs):  # the budgets, where they fit
        x, _ = px(t, 10.0 ** ys[0] if log_y else ys[0])
        draw.line([(x, top), (x, bottom)], fill=(225, 225, 225))
        draw.text((x, bottom + 6), f"{t:g}", fill="black", font=font, anchor="mt")
    for t in _log_ticks(*ys) if log_y else _linear_ticks(*ys):
        _, y = px(10.0 ** xs[0], t)
        draw.line([(left, y), (right, y)], fill=(225, 225, 225))
        draw.text((left - 6, y), f"{t:g}", fill="black", font=font, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(
        ((left + right) / 2, height - 22), "NFE (log scale)", fill="black", font=font, anchor="mm"
    )
    y_label = "Frechet distance" + (" (log scale)" if log_y else "")  # the font lacks é
    draw.text((8, top - 22), y_label, fill="black", font=font)
    if title:
        draw.text(((left + right) / 2, 10), title, fill="black", font=font, anchor="mt")
    for i, name in enumerate(samplers):
        color = _COLORS[i % len(_COLORS)]
        points = sorted((r.nfe, r.fd) for r in rows if r.sampler == name)
        xy = [px(nfe, fd) for nfe, fd in points]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=2, joint="curve")
        for x, y in xy:
            draw.ellipse([x - 3.5, y - 3.5, x + 3.5, y + 3.5], fill=color)
        ly = top + 8 + 20 * i
        draw.line([(right + 14, ly), (right + 40, ly)], fill=color, width=3)
        draw.text((right + 46, ly), name, fill="black", font=font, anchor="lm")
    save_png(image, path)
