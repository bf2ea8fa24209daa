"""TensorBoard scalars beside ``metrics.jsonl``: every numeric field of a metrics record, by step."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["log_scalars", "open_board"]


def open_board(run_dir: Path, setting: Any, start_step: int) -> Any:
    """A ``SummaryWriter`` on ``run_dir/tensorboard`` for run.tensorboard = ``setting`` ("auto": when
    tensorboard is installed, true: required, false: never; None when off); events after
    ``start_step`` left by an earlier, interrupted session are purged."""
    if not (setting == "auto" or isinstance(setting, bool)):
        raise ValueError(f'run.tensorboard must be "auto", true or false, got {setting!r}')
    if setting is False:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if setting == "auto":
            return None
        raise ValueError(
            "run.tensorboard = true needs the tensorboard package: pip install "
            "-c constraints.txt 'difflab[tensorboard]' (or set run.tensorboard = false)"
        ) from None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)


def log_scalars(board: Any, record: dict[str, Any]) -> None:
    """Write the record's finite numbers (not its step or booleans) as scalars at its step."""
    for key, value in record.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if key != "step" and number and math.isfinite(value):
            board.add_scalar(key, value, record["step"])
