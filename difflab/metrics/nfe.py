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
from torch import Tensor

from difflab import data, sampling
from difflab.metrics.classifier import mnist_features
from difflab.metrics.evaluate import check_same_kind, load_reference
from difflab.metrics.frechet import frechet_from_stats, gaussian_stats
from difflab.utils.charts import log_x_chart
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


def plot_nfe(rows: Sequence[NfeRow], path: str | os.PathLike[str], title: str = "") -> None:
    """Write a PNG (atomically) of Fréchet distance against NFE on a log axis, one line per
    sampler; the FD axis is logarithmic too when every FD is positive."""
    if not rows:
        raise ValueError("no rows to plot (no sampler could meet any of the NFE budgets)")
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        series.setdefault(r.sampler, []).append((r.nfe, r.fd))
    budgets = sorted({r.nfe for r in rows})
    chart = log_x_chart(
        series,
        x_label="NFE",
        y_label="Frechet distance",  # the font lacks é
        title=title,
        x_ticks=budgets if len(budgets) <= 12 else None,  # the budgets, where they fit
    )
    save_png(chart, path)
