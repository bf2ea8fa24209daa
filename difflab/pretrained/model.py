"""Save and load model directories, and sample from them: ``difflab.load("mnist").sample(...)``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from difflab.data import Dataset
from difflab.training.objectives import Objective
from difflab.utils.weights import save_weights, write_config

__all__ = ["save_model"]

FORMAT = "difflab model"
VERSION = 1
SHIPPED = Path(__file__).resolve().parent


def save_model(
    folder: str | os.PathLike[str],
    net: nn.Module,
    *,
    objective: Objective,
    data: Dataset,
    sample: dict[str, Any],
    training: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json`` (each atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "version": VERSION,
        "network": net.config,
        "objective": objective.config,
        "data": {
            "name": data.name,
            "shape": list(data.shape),
            "num_classes": data.num_classes,
            "classes": list(data.classes) if data.classes else None,
        },
        "sample": dict(sample),
        "training": training or {},
        **(extra or {}),
    }
    save_weights(
        folder / "model.safetensors", {k: v.detach().float() for k, v in net.state_dict().items()}
    )
    write_config(folder / "config.json", config)
    return folder
