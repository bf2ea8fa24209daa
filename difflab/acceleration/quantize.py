"""Post-training int8 quantization of a denoiser's network on CPU with PyTorch's own tooling
(``torch.ao.quantization``), calibrated across noise levels (Q-Diffusion, Li et al. 2023).

A diffusion network's activations change range with the noise level, so the ranges of static
quantization are observed along whole sampling trajectories of the float model: every denoiser call
of a run passes through the observers, which sees the activations at every noise level the sampler
visits, in proportion to how often it visits them (Q-Diffusion's time-step-aware calibration).

    y = s_y round(W_q x_q) with x_q = round(x / s_x) + z_x, W_q = round(W / s_W) per channel

Convolutions and linear layers can be quantized statically (int8 activations and weights, each
layer between a quantize and a dequantize: eager mode, so every other op (GroupNorm, SiLU,
attention, concatenation) stays float32 and any network works), and linear layers dynamically
(weights int8, activation ranges measured at each call, no calibration). The backend is
``torch.backends.quantized.engine`` ("x86", which uses fbgemm on AVX2 CPUs). Q-Diffusion's
BRECQ/AdaRound weight rounding and shortcut splitting are not implemented: weights are rounded to
nearest (see docs/acceleration.md for the measured error).

torch 2.13 still ships ``torch.ao.quantization`` but marks it deprecated in favour of torchao (not
a difflab dependency); its deprecation warning is silenced here.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from difflab import sampling
from difflab.core.tensors import check_name

__all__ = ["MODES", "along_trajectories", "quantize"]

MODES = ("static", "dynamic", "none")


@contextmanager
def _ao() -> Iterator[Any]:
    with warnings.catch_warnings():
        for message in (
            "torch.ao.quantization is deprecated",
            "torch.quantize_per",
            "reduce_range",
        ):
            warnings.filterwarnings("ignore", message=f".*{message}.*")
        import torch.ao.quantization as tq

        yield tq


class _Int8(nn.Module):
    """quantize -> layer -> dequantize: the layer runs in int8 between float neighbours."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        with _ao() as tq:
            self.quant, self.layer, self.dequant = tq.QuantStub(), layer, tq.DeQuantStub()

    def forward(self, x: Tensor) -> Tensor:
        return self.dequant(self.layer(self.quant(x)))


def _wrap_layers(net: nn.Module, names: set[str], qconfig: Any) -> None:
    """Replace the named layers of ``net`` by :class:`_Int8` wrappers carrying ``qconfig``."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name)
        wrapper = _Int8(getattr(parent, child))
        wrapper.qconfig = qconfig
        setattr(parent, child, wrapper)


def _layers(net: nn.Module, kind: type[nn.Module], keep_float: Sequence[str]) -> set[str]:
    """Names of the ``kind`` layers outside the ``keep_float`` submodules."""
    return {
        name
        for name, m in net.named_modules()
        if type(m) is kind and not any(name.startswith(p) for p in keep_float)
    }


def quantize(
    net: nn.Module,
    calibrate: Callable[[nn.Module], None] | None = None,
    *,
    conv: str = "static",
    linear: str = "dynamic",
    keep_float: Sequence[str] = ("time_embed", "class_embed"),
) -> nn.Module:
    """An int8 copy of ``net`` (eval mode, CPU): ``conv`` "static" or "none" for every Conv2d,
    ``linear`` "static", "dynamic" or "none" for every Linear, except inside the submodules named
    in ``keep_float`` (by default the noise-level and class embeddings, which other code reads
    weights of and which cost nothing). Static layers need ``calibrate``, called once with the
    observed copy: it should run the copy on representative inputs (see :func:`along_trajectories`).
    ``net`` itself is not changed."""
    check_name("conv quantization", conv, ("static", "none"))
    check_name("linear quantization", linear, MODES)
    q = copy.deepcopy(net).cpu().eval().requires_grad_(False)
    static = (_layers(q, nn.Conv2d, keep_float) if conv == "static" else set()) | (
        _layers(q, nn.Linear, keep_float) if linear == "static" else set()
    )
    if (conv == "static" or linear == "static") and calibrate is None:
        raise ValueError("static int8 layers need a calibrate function (their activation ranges)")
    with _ao() as tq:
        if linear == "dynamic":  # first: static preparation leaves qconfig = None on every module
            names = _layers(q, nn.Linear, keep_float)
            if names:
                tq.quantize_dynamic(q, names, dtype=torch.qint8, inplace=True)
        if static:
            _wrap_layers(q, static, tq.get_default_qconfig(torch.backends.quantized.engine))
            tq.prepare(q, inplace=True)
            with torch.no_grad():
                calibrate(q)
            tq.convert(q, inplace=True)
    return q


def along_trajectories(
    denoiser_of: Callable[[nn.Module], Callable[..., Tensor]],
    shape: Sequence[int],
    sigmas: Tensor,
    *,
    sampler: str = "euler",
    n: int = 64,
    batch_size: int = 64,
    labels: Tensor | None = None,
    seed: int = 0,
) -> Callable[[nn.Module], None]:
    """A calibration function for :func:`quantize`: it samples ``n`` trajectories of ``sampler``
    on ``sigmas`` with the denoiser ``denoiser_of(observed_net)`` (e.g. the model's wrapper, with
    guidance), so the observers see the network's activations at every noise level the sampler
    visits (Q-Diffusion). ``shape`` is one sample's; ``labels`` [n] when the model takes them."""
    fn = sampling.get(sampler)
    if labels is not None and len(labels) != n:
        raise ValueError(f"got {len(labels)} calibration labels for n = {n} trajectories")

    def calibrate(observed: nn.Module) -> None:
        den = denoiser_of(observed)
        gens = sampling.generators(seed, n)
        for lo in range(0, n, batch_size):
            rows = slice(lo, min(lo + batch_size, n))
            x = sampling.randn((len(gens[rows]), *shape), gens[rows])
            if math.isfinite(float(sigmas[0])):  # at sigma = inf x holds the unit noise
                x = x * float(sigmas[0])
            cond = None if labels is None else {"labels": labels[rows]}
            fn(den, x, sigmas, generator=gens[rows], cond=cond)

    return calibrate
