"""Where models are found: shipped ones by name, local model folders by path, and folders under
``$DIFFLAB_MODELS`` (a list of folders, separated like PATH) by their name. Every folder is the one
model-folder format (:mod:`difflab.utils.folder`); the diffusion models are listed and loaded here,
the shipped classifiers by :func:`load_classifier` (text models: :func:`difflab.text.load`)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from difflab import models
from difflab.models.classifiers import load_classifier as _load_classifier
from difflab.pretrained.model import SHIPPED, Model, model_name, read_model_config
from difflab.utils import folder as model_folder
from difflab.utils.folder import CONFIG, WEIGHTS
from difflab.utils.names import unknown_name
from difflab.utils.weights import read_config

__all__ = [
    "MODELS_ENV",
    "available",
    "classifiers",
    "describe",
    "find_local",
    "is_model_folder",
    "load",
    "load_classifier",
    "load_policy",
    "load_timeseries",
    "model_folders",
    "model_name",
    "named",
    "resolve",
]

MODELS_ENV = "DIFFLAB_MODELS"
LOCAL_PATTERNS = ("runs/*/model", "models/*")  # searched in the current folder by default


def is_model_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a diffusion model folder (:func:`difflab.utils.folder.is_model_folder`),
    a LoRA adapter of one (loaded on its base, :meth:`Model.from_adapter`), or holds config.json
    and model.safetensors whose config names no other difflab type (then ``difflab models`` lists
    it with the reason it cannot be read). A run folder's training config.json is neither; text
    models and classifiers are not diffusion models."""
    path = Path(path)
    if any(model_folder.is_model_folder(path, kind) for kind in ("diffusion", "adapter")):
        return True
    if not ((path / CONFIG).is_file() and (path / WEIGHTS).is_file()):
        return False
    try:
        return model_folder.folder_type(read_config(path / CONFIG)) is None
    except (OSError, ValueError, AttributeError):
        return True


def _shipped(kind: str) -> list[str]:
    return sorted(p.name for p in SHIPPED.iterdir() if model_folder.is_model_folder(p, kind))


def available() -> list[str]:
    """Names of the diffusion models shipped with difflab."""
    return _shipped("diffusion")


def classifiers() -> list[str]:
    """Names of the classifiers shipped with difflab (:func:`load_classifier`)."""
    return _shipped("classifier")


def load_classifier(
    name_or_path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> nn.Module:
    """A shipped classifier by name (:func:`classifiers`: ``"mnist_classifier"``, the metrics'
    feature network; ``"mnist_noisy_classifier"``, p(c | x, sigma) for classifier guidance) or a
    classifier folder, in eval mode without gradients."""
    key = str(name_or_path)
    if isinstance(name_or_path, str) and key in classifiers():
        return _load_classifier(SHIPPED / key, device)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        if isinstance(name_or_path, str) and not _looks_like_path(key):
            raise unknown_name("classifier", key, classifiers())
        raise FileNotFoundError(f"classifier folder {path} does not exist")
    return _load_classifier(path, device)


def model_folders(root: Path) -> list[Path]:
    """``root`` (or ``root/model``) when it is a model folder, else its subfolders that are (or
    hold one as ``model/``, as a training run's folder does)."""
    root = Path(root)
    for folder in (root, root / "model"):
        if is_model_folder(folder):
            return [folder]
    if not root.is_dir():
        return []
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        found.extend(f for f in (sub, sub / "model") if is_model_folder(f))
    return found


def _env_folders() -> list[Path]:
    roots = [Path(p) for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p]
    return [f for root in roots for f in model_folders(root)]


def named() -> dict[str, Path]:
    """Model name -> folder: the shipped models, then those under $DIFFLAB_MODELS (first wins)."""
    found = {name: SHIPPED / name for name in available()}
    for folder in _env_folders():
        found.setdefault(model_name(folder), folder)
    return found


def _looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or text.startswith((".", "~"))


def resolve(name_or_path: str | os.PathLike[str]) -> Path:
    """The folder of a model name (shipped first, then $DIFFLAB_MODELS) or of a path (a model folder,
    its config.json or model.safetensors, or a training run's folder holding ``model/``). Names win
    over paths: write ./mnist for a folder called mnist."""
    key = str(name_or_path)
    known = named()
    if isinstance(name_or_path, str) and key in known:
        return known[key]
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.name in (CONFIG, WEIGHTS):
        return path.parent
    if path.is_dir() and not is_model_folder(path) and is_model_folder(path / "model"):
        return path / "model"  # a training run's folder
    if path.exists():
        return path
    if not isinstance(name_or_path, str) or _looks_like_path(key):
        raise FileNotFoundError(f"model folder {path} does not exist")
    raise unknown_name("model", key, known)


def load(name_or_path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Model:
    """The model called ``name_or_path`` (see :func:`available`) or saved in that folder, on
    ``device``: ``difflab.load("mnist").sample(16, labels=3)``; :meth:`Model.load`."""
    return Model.load(name_or_path, device)


def load_policy(name_or_path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Any:
    """The policy (:class:`difflab.policy.PolicyModel`) in a folder or a run folder's ``model/``; a
    folder of another model type is a ValueError naming its type."""
    from difflab.policy import PolicyModel

    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"policy folder {path} does not exist")
    return PolicyModel.load(path, device)


def load_timeseries(
    name_or_path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> Any:
    """The time-series model (:class:`difflab.timeseries.TimeSeriesModel`) in a folder or a run
    folder's ``model/``; a folder of another model type is a ValueError naming its type."""
    from difflab.timeseries import TimeSeriesModel

    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"time-series model folder {path} does not exist")
    return TimeSeriesModel.load(path, device)


def find_local(roots: Iterable[str | os.PathLike[str]] | None = None) -> list[Path]:
    """Local model folders: those in or under ``roots`` (default: ./runs/*/model and ./models/*),
    then those under $DIFFLAB_MODELS; each once."""
    if roots is None:
        candidates = [p for pattern in LOCAL_PATTERNS for p in sorted(Path().glob(pattern))]
    else:
        candidates = [Path(r) for r in roots]
    folders = [f for c in candidates for f in model_folders(c)] + _env_folders()
    seen, unique = set(), []
    for f in folders:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique


def _parameter_count(network: dict[str, Any], where: Path) -> int:
    """Parameters of the network a config describes, built on the meta device (no memory, no
    weights read)."""
    try:
        with torch.device("meta"):
            return models.parameter_count(models.build(network))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: cannot build its network: {e}") from None


def describe(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """What a model folder holds, without building the network: name, network type, sample shape,
    classes, parameter count, training steps, process and prediction."""
    folder = Path(folder)
    config = read_model_config(folder)
    if not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"{folder} is not a model folder: it has no {WEIGHTS}")
    parameterization = config["parameterization"]
    process = parameterization.get("process", {})
    return {
        "name": model_name(folder),
        "path": folder,
        "type": config["network"].get("type", "?"),
        "shape": tuple(config["data"]["shape"]),
        "num_classes": config["data"]["num_classes"],
        "parameters": _parameter_count(config["network"], folder / CONFIG),
        "steps": config.get("training", {}).get("steps"),
        "process": process.get("name", "?") if isinstance(process, dict) else str(process),
        "prediction": parameterization.get("prediction", "?"),
    }
