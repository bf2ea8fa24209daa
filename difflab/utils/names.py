"""Registry names: a named error for an unknown one that lists the valid names, nearest first."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["check_name", "unknown_name"]


def unknown_name(kind: str, name: object, valid: Iterable[str]) -> ValueError:
    """A ValueError for an unknown registry name that lists the valid ones, nearest first."""
    valid = sorted(valid)
    near = difflib.get_close_matches(name, valid, n=3, cutoff=0.5) if isinstance(name, str) else []
    hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    return ValueError(f"unknown {kind} {name!r}.{hint} Valid names: {', '.join(valid)}")


def check_name(kind: str, name: object, valid: Iterable[str]) -> None:
    """Raise :func:`unknown_name` unless ``name`` is a string among ``valid`` (a list, a number or
    None from a hand-edited config is an unknown name too, not a TypeError)."""
    if not (isinstance(name, str) and name in valid):
        raise unknown_name(kind, name, valid)
