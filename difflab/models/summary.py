"""Size and cost of a network: parameter count and the FLOPs of one forward pass per sample.

FLOPs are counted by torch.utils.flop_counter on one forward at batch 1: matrix products,
convolutions and attention, 2 FLOPs per multiply-accumulate (MAC); normalizations and pointwise
operations are not counted (they are a few percent of a UNet's or DiT's cost).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = ["flops", "parameter_count", "summary"]


def parameter_count(net: nn.Module) -> int:
    """Number of trainable and frozen parameters, sum of numel over ``net.parameters()``."""
    return sum(p.numel() for p in net.parameters())


def _cpu_attention_flops(query: torch.Size, key: torch.Size, value: torch.Size, *_, **__) -> int:
    """FLOPs of the CPU attention kernel, which torch's counter does not know: 4 B H N_q N_k d."""
    return sdpa_flop_count(query, key, value)


_EXTRA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def flops(net: nn.Module, shape: Sequence[int]) -> int:
    """FLOPs (2 x MACs) of one forward pass on one sample of ``shape`` (no batch dim), e.g. (1, 28, 28)."""
    p = next(net.parameters())
    x = torch.zeros(1, *shape, dtype=p.dtype, device=p.device)
    time = torch.full((1,), 0.5, device=p.device)
    labels = torch.zeros(1, dtype=torch.long, device=p.device)
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA)
    with torch.no_grad(), counter:
        net(x, time, labels if getattr(net, "num_classes", 0) > 0 else None)
    return counter.get_total_flops()


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.3g} "


def summary(net: nn.Module, example_shape: Sequence[int]) -> str:
    """A few lines: network type, parameters (and fp32 size) per top-level part, MACs and FLOPs per
    sample of ``example_shape`` (no batch dim)."""
    total = parameter_count(net)
    cost = flops(net, example_shape)
    kind = getattr(net, "config", {}).get("type", type(net).__name__)
    lines = [
        f"{kind}: {total:,} parameters ({total * 4 / 2**20:.2f} MiB in fp32), "
        f"{_si(cost / 2)}MACs = {_si(cost)}FLOPs per sample of shape {tuple(example_shape)}"
    ]
    width = max((len(name) for name, _ in net.named_children()), default=0)
    for name, child in net.named_children():
        n = parameter_count(child)
        if n:
            lines.append(f"  {name:<{width}}  {n:>12,}  {100 * n / total:5.1f}%")
    return "\n".join(lines)
