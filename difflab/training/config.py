"""Training configurations: a TOML file, defaults for everything it leaves out, and ``key=value``
overrides from the command line. Unknown keys are errors that name the nearest valid key."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from difflab.core.tensors import check_name, unknown_name
from difflab.utils.weights import read_config

__all__ = [
    "DEFAULTS",
    "FREE_SECTIONS",
    "LOOP_DEFAULTS",
    "apply_overrides",
    "extend",
    "load_config",
    "merge_defaults",
]

# The sections and keys the training loop itself reads (difflab.training.loop.Trainer), whatever
# the task: a task's defaults are these, extended by :func:`extend` with its own sections and keys.
LOOP_DEFAULTS: dict[str, dict[str, Any]] = {
    "run": {
        "name": "run",
        "out": "runs",
        "seed": 0,
        "steps": 1000,
        "log_every": 50,
        "checkpoint_every": 500,
        "keep": 2,
        "threads": 0,
        "max_bad_steps": 5,
        "tensorboard": "auto",
    },
    "optim": {
        "lr": 2e-4,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "weight_decay": 0.0,
        "batch_size": 128,
        "accumulate": 1,
        "grad_clip": 1.0,
        "schedule": "constant",
        "warmup": 0,
        "min_factor": 0.0,
    },
    "ema": {"kind": "power", "sigma_rel": 0.05, "decay": 0.999},
    "precision": {"autocast": "none", "channels_last": False},
}


def extend(
    base: dict[str, dict[str, Any]], sections: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """``base`` with each of ``sections``' keys set (new sections and keys added, others' values
    replaced): a task's defaults from :data:`LOOP_DEFAULTS`."""
    out = copy.deepcopy(base)
    for name, values in sections.items():
        out.setdefault(name, {}).update(copy.deepcopy(values))
    return out


# Sections whose keys are free-form (passed on to another component that validates them).
FREE_SECTIONS = ("model", "objective", "data")

# The denoising task's defaults (difflab.training.denoising): the loop's, with its data, network,
# objective and sampling sections and the run keys of its evaluations.
DEFAULTS: dict[str, dict[str, Any]] = extend(
    LOOP_DEFAULTS,
    {
        "run": {"sample_every": 0, "val_every": 0, "val_batches": 4},
        "data": {"name": "mnist", "split": "train", "val_split": "test"},
        "model": {"type": "unet"},
        "objective": {},
        "sample": {
            "sampler": "dpmpp_2m",
            "schedule": "karras",
            "steps": 20,
            "n": 64,
            "guidance": 1.0,
        },
    },
)


def merge_defaults(
    config: dict[str, Any],
    defaults: dict[str, dict[str, Any]] = DEFAULTS,
    free: tuple[str, ...] = FREE_SECTIONS,
) -> dict[str, Any]:
    """The full configuration: ``config`` over ``defaults`` (a task's; the denoising task's by
    default), with unknown sections and keys refused except in the ``free`` sections."""
    out = copy.deepcopy(defaults)
    for section, values in config.items():
        check_name("config section", section, defaults)
        if not isinstance(values, dict):
            raise ValueError(f"config section [{section}] must be a table, got {values!r}")
        for key, value in values.items():
            if section not in free and key not in defaults[section]:
                raise unknown_name(f"key in [{section}]", key, defaults[section])
            out[section][key] = copy.deepcopy(value)
    return out


def _parse_value(text: str) -> Any:
    """A TOML value (number, bool, string, array, inline table); bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(config: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (nested keys allowed: ``model.channel_mult=[1,2]``)."""
    config = copy.deepcopy(config)
    for item in overrides:
        path, sep, text = item.partition("=")
        keys = path.strip().split(".")
        if not sep or len(keys) < 2 or not all(keys):
            raise ValueError(f"override {item!r} must look like section.key=value")
        node = config
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {key} is not a table")
        node[keys[-1]] = _parse_value(text.strip())
    return config


def load_config(
    path: str | Path | dict[str, Any] | None,
    overrides: Iterable[str] = (),
    defaults: dict[str, dict[str, Any]] = DEFAULTS,
    free: tuple[str, ...] = FREE_SECTIONS,
) -> dict[str, Any]:
    """Read a TOML/JSON training config (or take a dict), apply overrides, fill in ``defaults``
    and validate keys."""
    config = path if isinstance(path, dict) else read_config(path) if path is not None else {}
    return merge_defaults(apply_overrides(config, overrides), defaults, free)
