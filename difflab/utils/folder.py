"""One model-folder format for every saved network in difflab: ``config.json`` (what the network is
and what using it needs) beside ``model.safetensors`` (its weights), plus optional extras in the same
folder (saved step grids, calibrations, normalizers). Diffusion models, text models, classifiers,
distilled students and the policies, fine-tuned and time-series models all write and read it here.

    save_folder(folder, {"type": "diffusion", "network": {...}, ...}, net.state_dict())
    config = read_folder_config(folder, "diffusion"); tensors = read_folder_weights(folder)

The config carries ``format`` = "difflab model", an integer ``version`` and a ``type``. Folders from
before version 2 keep loading: "difflab model" version 1 is type "diffusion", "difflab text model"
version 1 is type "text", and the shipped classifiers' configs (no format, an "architecture") are
type "classifier".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from difflab.utils.weights import (
    check_no_pickles,
    load_weights,
    read_config,
    save_weights,
    write_config,
)

__all__ = [
    "CONFIG",
    "FORMAT",
    "VERSION",
    "WEIGHTS",
    "folder_name",
    "folder_type",
    "is_model_folder",
    "model_folder",
    "read_folder_config",
    "read_folder_weights",
    "save_folder",
]

FORMAT = "difflab model"
VERSION = 2
CONFIG, WEIGHTS = "config.json", "model.safetensors"
# formats of version 1 and the type each one is now
LEGACY_FORMATS = {"difflab text model": "text"}

PathLike = str | os.PathLike[str]


def save_folder(folder: PathLike, config: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> Path:
    """Write ``folder/model.safetensors`` (float tensors as float32) then ``folder/config.json``
    with the format, version and ``config["type"]``, each atomically; returns the folder."""
    if not isinstance(config.get("type"), str):
        raise ValueError("a model config needs a 'type' (e.g. 'diffusion', 'text', 'classifier')")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {
        k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous()
        for k, v in tensors.items()
    }
    save_weights(folder / WEIGHTS, weights)
    write_config(folder / CONFIG, {**config, "format": FORMAT, "version": VERSION})
    return folder


def folder_type(config: Mapping[str, Any]) -> str | None:
    """The type a model config describes, for this version and the older ones; None if it is not
    a model config (a training run's config.json, say)."""
    fmt = config.get("format")
    if fmt == FORMAT:
        return config.get("type", "diffusion")  # version 1 wrote only diffusion models
    if fmt in LEGACY_FORMATS:
        return LEGACY_FORMATS[fmt]
    if fmt is None and isinstance(config.get("architecture"), str):
        return "classifier"
    return None


def read_folder_config(folder: PathLike, expected: str | None = None) -> dict[str, Any]:
    """``folder/config.json`` checked and brought to the current version: a format difflab knows, a
    version it can read, and (when given) the ``expected`` type. Refuses folders of pickle
    weights with the command that converts them."""
    folder = Path(folder)
    check_no_pickles(folder)
    path = folder / CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} is not a model folder: it has no {CONFIG} (the config file a model folder "
            f"holds beside {WEIGHTS}, as `difflab train` writes them)"
        )
    config = read_config(path)
    kind = folder_type(config)
    if kind is None:
        raise ValueError(
            f"{path} is not a difflab model config: format {config.get('format')!r}, "
            f"expected {FORMAT!r}"
        )
    version = config.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{path} has an invalid format version {version!r}")
    if version > VERSION:
        raise ValueError(
            f"{path} is model format version {version}, written by a newer difflab; this one reads "
            f"versions up to {VERSION}: upgrade difflab"
        )
    if expected is not None and kind != expected:
        raise ValueError(f"{folder} holds a {kind} model, not a {expected} model")
    return {**config, "type": kind}


def read_folder_weights(folder: PathLike, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """name -> tensor of ``folder/model.safetensors`` (checked whole before it is read)."""
    weights = Path(folder) / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} is not a model folder: it has no {WEIGHTS}")
    return load_weights(weights, device)


def is_model_folder(path: PathLike, expected: str | None = None) -> bool:
    """Whether ``path`` holds a model config (of the ``expected`` type, when given) and weights."""
    path = Path(path)
    if not ((path / CONFIG).is_file() and (path / WEIGHTS).is_file()):
        return False
    try:
        kind = folder_type(read_config(path / CONFIG))
    except (OSError, ValueError):
        return False
    return kind is not None and (expected is None or kind == expected)


def model_folder(path: PathLike) -> Path:
    """The model folder of ``path``: the folder itself, or a training run's ``model/``."""
    path = Path(path)
    if not (path / WEIGHTS).is_file() and (path / "model" / WEIGHTS).is_file():
        return path / "model"
    return path


def folder_name(folder: PathLike) -> str:
    """A model folder's name: its own, or its run's for a training run's ``<run>/model``."""
    folder = Path(folder).resolve()
    return folder.parent.name if folder.name == "model" else folder.name
