"""A saved diffusion model's config: version 2 of the one model-folder format
(:mod:`difflab.utils.folder`), built here for every writer (``difflab train``'s export, distillation,
:meth:`difflab.pretrained.Model.save`) and checked here for every reader.

    config = diffusion_config(
        net, objective.parameterization,
        null_class=data.num_classes > 0 and objective.label_dropout > 0,
        data=data, sample={"sampler": "heun", "steps": 10, ...}, objective=objective.config,
        training={"steps": 5000, "config": {...}, "command": "difflab train ..."},
    )
    save_folder(folder, config, net.state_dict())     # difflab.utils.folder

The config (JSON):

    {"type": "diffusion",
     "network": net.config,                         # difflab.models.build(config["network"])
     "parameterization": Parameterization.config,   # process, prediction, time input, sigma_data
     "null_class": bool,                            # label -1 (classifier-free guidance) was trained
     "objective": {...},                            # the training objective's config: a record
     "data": {"name", "shape", "num_classes", "classes"},
     "sample": {...},                               # sampling defaults: sampler, steps, guidance...
     "training": {...},                             # a record: steps, config, command
     ...}                                           # extras, e.g. "distillation"

Sampling needs only network, parameterization, null_class, data and sample; "objective" and
"training" say how the network was made. Version-1 folders (all models shipped before version 2)
have no "parameterization" nor "null_class": :func:`upgrade_diffusion_config` derives them from the
objective (``Parameterization.from_config(objective)``; a null class when the model is conditional
and was trained with label_dropout > 0).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from difflab.core.parameterization import Parameterization
from difflab.utils.folder import CONFIG, VERSION, read_folder_config

__all__ = [
    "SECTIONS",
    "TYPE",
    "check_diffusion_config",
    "data_section",
    "diffusion_config",
    "network_shape",
    "read_diffusion_config",
    "upgrade_diffusion_config",
]

TYPE = "diffusion"
# the sections every version-2 diffusion config has; others ("distillation", ...) are extras
SECTIONS = (
    "network",
    "parameterization",
    "null_class",
    "objective",
    "data",
    "sample",
    "training",
)
_RESERVED = {"type", "format", "version", *SECTIONS}


def data_section(data: Any) -> dict[str, Any]:
    """``{"name", "shape", "num_classes", "classes"}`` of a data set (a :class:`difflab.data.Dataset`
    or anything with those attributes) or of a mapping holding those keys."""
    get = data.get if isinstance(data, Mapping) else lambda k, d=None: getattr(data, k, d)
    classes = get("classes")
    return {
        "name": get("name"),
        "shape": [int(n) for n in get("shape")],
        "num_classes": int(get("num_classes", 0) or 0),
        "classes": list(classes) if classes else None,
    }


def diffusion_config(
    network: Any,
    parameterization: Parameterization,
    *,
    data: Any,
    sample: Mapping[str, Any],
    null_class: bool,
    objective: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The version-2 config of a diffusion model, checked (module docstring); write it with
    ``difflab.utils.folder.save_folder(folder, config, net.state_dict())``.

    ``network``: the network (its ``.config``) or its config dict. ``parameterization``: how the
    network's output becomes the denoiser (``objective.parameterization`` of a training objective).
    ``data``: a data set or a mapping with name, shape, num_classes, classes (see
    :func:`data_section`). ``sample``: sampling defaults. ``null_class``: whether label -1 was
    trained (conditional model and label dropout > 0). ``objective``: the training objective's
    config, kept as a record. ``training``: a record (steps, config, command). ``extra``: further
    top-level sections (e.g. ``{"distillation": {...}}``), which may not replace the ones above.
    """
    if not isinstance(parameterization, Parameterization):
        kind = type(parameterization).__name__
        raise TypeError(f"parameterization must be a difflab Parameterization, got {kind}")
    net_config = getattr(network, "config", network)
    if not isinstance(net_config, Mapping):
        raise TypeError(f"network must be a difflab network or its config dict, got {network!r}")
    clash = sorted(_RESERVED & set(extra or {}))
    if clash:
        raise ValueError(f"extra sections may not replace the config's own: {', '.join(clash)}")
    config = {
        "type": TYPE,
        "network": dict(net_config),
        "parameterization": parameterization.config,
        "null_class": bool(null_class),
        "objective": dict(objective or {}),
        "data": data_section(data),
        "sample": dict(sample),
        "training": dict(training or {}),
        **dict(extra or {}),
    }
    return check_diffusion_config(config, "the model config")


SEQUENCE_NETWORKS = ("temporal_unet", "sequence_transformer")


def network_shape(network: Mapping[str, Any]) -> tuple[int | None, ...] | None:
    """The sample shape a network config expects: [C, S, S] for image networks, [dim] for vectors,
    [None, dim] for sequences [T, dim] of any length T."""
    if "image_size" in network:
        return (network.get("in_channels", 1), network["image_size"], network["image_size"])
    if "dim" in network:
        return (
            (None, network["dim"])
            if network.get("type") in SEQUENCE_NETWORKS
            else (network["dim"],)
        )
    return None


def _section(config: Mapping[str, Any], name: str, where: Any) -> dict[str, Any]:
    value = config.get(name)
    if not isinstance(value, dict):
        raise ValueError(f"{where} has no {name!r} section (a table), so it cannot be loaded")
    return value


def upgrade_diffusion_config(config: Mapping[str, Any], where: Any = "the model config") -> dict:
    """A version-1 diffusion config brought to version 2 (a version-2 one is returned as it is):
    its parameterization from the objective section, its null class from the label dropout."""
    config = dict(config)
    # a config without a version is version 1, unless it was just built (it has a parameterization)
    if config.get("version", VERSION if "parameterization" in config else 1) >= 2:
        return config
    objective = _section(config, "objective", where)
    if "process" not in objective:
        raise ValueError(f"{where}: the model's objective config has no 'process'")
    try:
        parameterization = Parameterization.from_config(objective)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: the model's objective config is invalid: {e}") from None
    dropout = objective.get("label_dropout", 0.0) or 0.0
    if not isinstance(dropout, int | float) or not math.isfinite(dropout):
        raise ValueError(f"{where}: objective.label_dropout must be a number, got {dropout!r}")
    data = config.get("data")
    classes = data.get("num_classes", 0) if isinstance(data, dict) else 0
    config["parameterization"] = parameterization.config
    config["null_class"] = bool(isinstance(classes, int) and classes > 0 and dropout > 0)
    config["version"] = VERSION
    return config


def check_diffusion_config(config: dict[str, Any], where: Any = "the model config") -> dict:
    """``config`` (version 2) after checking its sections, its parameterization and that the network's
    input shape and classes match the data; a ValueError naming ``where`` otherwise."""
    if config.get("type", TYPE) != TYPE:
        raise ValueError(f"{where} describes a {config.get('type')} model, not a diffusion model")
    network = _section(config, "network", where)
    _section(config, "parameterization", where)
    data = _section(config, "data", where)
    shape, classes = data.get("shape"), data.get("num_classes")
    if not (isinstance(shape, list) and shape and all(isinstance(n, int) and n > 0 for n in shape)):
        raise ValueError(f"{where}: data.shape must be a list of positive integers, got {shape!r}")
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
        raise ValueError(f"{where}: data.num_classes must be an integer >= 0, got {classes!r}")
    if network.get("num_classes", 0) != classes:
        raise ValueError(
            f"{where} does not match itself: the network has {network.get('num_classes', 0)} "
            f"classes but the data has {classes}"
        )
    expected = network_shape(network)
    if expected is not None and (
        len(expected) != len(shape) or any(e not in (None, n) for e, n in zip(expected, shape))
    ):
        raise ValueError(
            f"{where} does not match itself: the {network.get('type')} network takes samples of "
            f"shape [{', '.join('T' if e is None else str(e) for e in expected)}] but the data "
            f"shape is {shape}"
        )
    null = config.get("null_class")
    if not isinstance(null, bool):
        raise ValueError(f"{where}: null_class must be true or false, got {null!r}")
    if null and classes == 0:
        raise ValueError(f"{where}: null_class is true but the model is unconditional (no classes)")
    try:
        Parameterization.from_config(config["parameterization"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: its parameterization config is invalid: {e}") from None
    for name in ("objective", "sample", "training"):
        if not isinstance(config.get(name, {}), dict):
            raise ValueError(f"{where}: the {name!r} section must be a table")
    return config


def read_diffusion_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``folder/config.json`` of a diffusion model, of any version, as a checked version-2 config
    (format, version and type by :func:`difflab.utils.folder.read_folder_config`)."""
    where = Path(folder) / CONFIG
    config = read_folder_config(folder, TYPE)
    return check_diffusion_config(upgrade_diffusion_config(config, where), where)
