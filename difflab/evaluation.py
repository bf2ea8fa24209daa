"""Layer 5: judge samples and samplers in one call.

``evaluate_samples`` scores MNIST-shaped images in the shipped classifier's features (Fréchet
distance, precision/recall, density/coverage, MMD, class accuracy; optionally Inception FID) and 2-D
(or any) vectors by their Fréchet distance, sliced W2 and MMD, each against a reference split such as
"mnist-test" or "moons-test". ``bench_nfe`` samples a saved model with several samplers at equal
numbers of denoiser evaluations (NFE) and ``plot_nfe`` / ``format_table`` show the result.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from difflab import data, pretrained, sampling
from difflab.core.tensors import unknown_name
from difflab.data.arrays import read_arrays
from difflab.metrics import (
    evaluate_images,
    frechet_distance,
    frechet_from_stats,
    gaussian_stats,
    mmd2,
    mnist_features,
    sliced_w2,
)
from difflab.pretrained.generate import step_grid
from difflab.utils.images import save_png

__all__ = [
    "NfeRow",
    "bench_nfe",
    "evaluate_samples",
    "format_table",
    "load_reference",
    "plot_nfe",
    "read_samples",
    "steps_for_nfe",
]

SPLITS = ("train", "test")


def load_reference(reference: str | os.PathLike[str] | Tensor | np.ndarray, n: int) -> Tensor:
    """Up to ``n`` reference samples: the first n of a data set's split named "name-split"
    ("mnist-test", "moons-test"; a bare name means its test split; a toy's split is drawn with n
    samples), of a .npy / .npz file or image folder, or of a given tensor or array."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"need at least 2 reference samples, got n = {n!r}")
    if isinstance(reference, Tensor | np.ndarray):
        return torch.as_tensor(reference)[:n]
    key = str(reference)
    name, _, split = key.rpartition("-")
    if split not in SPLITS or not name:
        name, split = key, "test"
    if isinstance(reference, str) and name in data.available():
        options = {"n": n} if name in data.toys.TOYS else {}
        return data.load(name, split, **options).x[:n]
    if not Path(key).exists():
        raise ValueError(
            f"{unknown_name('reference data set', name, data.available())}; a reference is a "
            "split written name-split (e.g. 'mnist-test') or an existing path"
        )
    return data.load(key).x[:n]


def read_samples(path: str | os.PathLike[str]) -> tuple[Tensor, Tensor | None]:
    """(samples, labels or None) from a .npz written by ``difflab sample`` (arrays "images" uint8 or
    "samples", and "labels"; labels count only when none is -1, the null class) or a .npy file."""
    samples, labels = read_arrays(path)
    if samples.dtype != np.uint8 and samples.dtype.kind not in "f":
        raise ValueError(f"{path}: samples must be uint8 images or floats, got {samples.dtype}")
    x = torch.from_numpy(samples)
    if labels is None or labels.dtype.kind not in "iu" or (labels < 0).any():
        return x, None
    return x, torch.from_numpy(labels.astype(np.int64))


def _is_vectors(x: Tensor) -> bool:
    return x.ndim == 2


def _check_same_kind(samples: Tensor, reference: Tensor, what: str) -> None:
    if _is_vectors(samples) != _is_vectors(reference) or (
        _is_vectors(samples) and samples.shape[1] != reference.shape[1]
    ):
        raise ValueError(
            f"{what} are of shape {list(samples.shape[1:])} but the reference samples are of "
            f"shape {list(reference.shape[1:])}: pass a matching reference (e.g. 'mnist-test' for "
            "MNIST images, 'moons-test' for 2-D points)"
        )


def evaluate_samples(
    samples: Tensor | np.ndarray,
    labels: Tensor | np.ndarray | None = None,
    reference: str | os.PathLike[str] | Tensor | np.ndarray = "mnist-test",
    n: int = 10_000,
    *,
    inception: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """Sample quality against ``n`` reference samples (:func:`load_reference`).

    MNIST images (uint8, or float in [-1, 1]): :func:`difflab.metrics.evaluate_images`, i.e. the
    Fréchet distance (Heusel et al. 2017), precision/recall, density/coverage and MMD^2 in the
    shipped classifier's features, class accuracy with ``labels``, and with ``inception`` the
    Inception FID (optional extra). Vectors [N, D]: the Fréchet distance of the raw vectors, sliced
    W2 (Bonneel et al. 2015; projections seeded by ``seed``) and RBF MMD^2 (Gretton et al. 2012).
    """
    x = torch.as_tensor(samples)
    if len(x) < 2:
        raise ValueError(f"need at least 2 samples, got shape {tuple(x.shape)}")
    ref = load_reference(reference, n)
    _check_same_kind(x, ref, "the samples")
    if not _is_vectors(x):
        y = None if labels is None else torch.as_tensor(labels)
        result = evaluate_images(x, ref, y)
        if inception:
            from difflab.metrics.inception import inception_fid

            result["inception_fid"] = inception_fid(x, ref)
        return result
    if labels is not None or inception:
        raise ValueError("class accuracy and Inception FID need images; these samples are vectors")
    x, ref = x.double(), ref.double()
    return {
        "frechet_distance": frechet_distance(x, ref),
        "sliced_w2": sliced_w2(x, ref, generator=torch.Generator().manual_seed(seed)),
        "mmd2": mmd2(x, ref),
    }


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
    info = sampling.info(sampler)
    if info.adaptive:
        raise ValueError(f"sampler {sampler!r} chooses its steps adaptively: it has no fixed NFE")
    for steps in range(1, nfe + 1):  # every step spends at least one evaluation
        spent = info.nfe(steps, infinite_start)
        if spent >= nfe:
            return steps if spent == nfe else None
    return None


def _default_reference(model: pretrained.Model) -> str:
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
    model: str | os.PathLike[str] | pretrained.Model,
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
    the model's training data)."""
    if isinstance(model, str | os.PathLike):
        model = pretrained.load(model)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (a covariance needs 2 samples), got {n!r}")
    bad = [b for b in nfes if isinstance(b, bool) or not isinstance(b, int) or b < 1]
    if bad or not nfes:
        raise ValueError(f"NFE budgets must be positive integers, got {list(nfes)}")
    if not samplers:
        raise ValueError("name at least one sampler")
    d = model.defaults
    first = step_grid(
        d["schedule"], 1, model.objective.process, d.get("sigma_min"), d.get("sigma_max")
    )[0]
    plan = [
        (name, budget, steps_for_nfe(name, budget, math.isinf(float(first))))
        for name in samplers
        for budget in nfes
    ]
    ref = load_reference(reference or _default_reference(model), reference_n)
    features = _features(model.shape)
    probe = torch.zeros(2, *model.shape)
    _check_same_kind(probe, ref, f"{model.name}'s samples")
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
