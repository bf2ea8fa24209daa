"""Networks built from plain config dicts, so a saved model is its config JSON plus its weights.

``build({"type": "unet", ...})`` makes a network; ``net.config`` is the JSON-serializable dict, all
defaults filled in, that builds the same architecture again.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from difflab.core.tensors import check_name

__all__ = ["Network", "available", "build", "register"]


class Network(nn.Module):
    """A network called as ``net(x_t, time, labels=None)`` whose ``config`` rebuilds it."""

    type: str = ""

    def __init__(self, arguments: dict[str, Any]) -> None:
        super().__init__()
        self.config: dict[str, Any] = {"type": self.type} | {
            k: _jsonable(v) for k, v in arguments.items() if k != "self" and not k.startswith("__")
        }


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


_NETWORKS: dict[str, type[Network]] = {}
N = TypeVar("N", bound=type[Network])


def register(name: str) -> Callable[[N], N]:
    """Class decorator: make the network buildable as ``build({"type": name, ...})``."""

    def decorate(cls: N) -> N:
        cls.type = name
        _NETWORKS[name] = cls
        return cls

    return decorate


def available() -> list[str]:
    """The network types ``build`` knows."""
    return sorted(_NETWORKS)


def build(config: dict[str, Any]) -> Network:
    """The network described by ``config``: its "type" and that type's keyword arguments."""
    if not isinstance(config, dict) or "type" not in config:
        raise ValueError('a network config must be a dict with a "type" key, e.g. {"type": "unet"}')
    options = dict(config)
    name = options.pop("type")
    check_name("network type", name, _NETWORKS)
    cls = _NETWORKS[name]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in options:
        check_name(f"{name} config key", key, valid)
    return cls(**options)
