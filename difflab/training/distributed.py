"""Data-parallel training with torch.distributed: launched by torchrun (RANK, WORLD_SIZE, MASTER_ADDR
in the environment), gloo on CPU and nccl on GPU; without torchrun everything is one process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.distributed as td
from torch import nn

__all__ = [
    "any_rank",
    "barrier",
    "device",
    "initialized",
    "is_main",
    "mean",
    "no_sync",
    "rank",
    "world_size",
    "wrap",
]


def _active() -> bool:
    return td.is_available() and td.is_initialized()


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return td.get_rank() if _active() else 0


def world_size() -> int:
    """The number of processes (1 without torchrun)."""
    return td.get_world_size() if _active() else 1


def is_main() -> bool:
    """Rank 0 does all file I/O and printing."""
    return rank() == 0


def device() -> torch.device:
    """cuda:<LOCAL_RANK> when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


@contextmanager
def initialized() -> Iterator[None]:
    """Join the process group torchrun set up (if any) for the duration of the block."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1 or _active():
        yield
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(device())
    td.init_process_group(backend)
    try:
        yield
    finally:
        td.destroy_process_group()


def wrap(net: nn.Module) -> nn.Module:
    """DistributedDataParallel around ``net`` when more than one process runs, else ``net``."""
    if world_size() == 1:
        return net
    ids = [device().index] if device().type == "cuda" else None
    return nn.parallel.DistributedDataParallel(net, device_ids=ids)


def no_sync(model: nn.Module) -> Any:
    """Skip DDP's gradient all-reduce (for all but the last micro-batch of an accumulation)."""
    return (
        model.no_sync() if isinstance(model, nn.parallel.DistributedDataParallel) else nullcontext()
    )


def mean(value: float) -> float:
    """The mean of a float over all processes."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device())
    td.all_reduce(t)
    return float(t) / world_size()


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is set on any process (so that all of them stop at the same step)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device=device())
    td.all_reduce(t, op=td.ReduceOp.MAX)
    return bool(t)


def barrier() -> None:
    """Wait for every process (no-op in one process)."""
    if world_size() > 1:
        td.barrier()
