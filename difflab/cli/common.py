"""What every command shares: one-line user errors (exit status 2) and output-path checks."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["CliError", "Parser", "check_output", "lookup", "positive", "user_errors"]


class CliError(ValueError):
    """A user error: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``difflab <command>: error: ...``, status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's bad-input errors (ValueError, FileNotFoundError) into a :class:`CliError`."""
    try:
        yield
    except CliError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise CliError(str(e)) from None


def lookup(fn: Callable[[str], Any], name: str) -> Any:
    """``fn(name)`` for a registry lookup; an unknown name becomes a CliError naming the nearest."""
    with user_errors():
        return fn(name)


def check_output(path: str, suffixes: Sequence[str], option: str = "--out") -> Path:
    """The output path, after checking its suffix and that its folder exists and is writable, so no
    work is lost at the end."""
    from difflab.utils.files import check_writable

    if not path.lower().endswith(tuple(suffixes)):
        raise CliError(f"{option} must end in {' or '.join(suffixes)}, got {path!r}")
    with user_errors():
        return check_writable(path)


def positive(value: int | None, option: str, minimum: int = 1) -> None:
    """Raise a CliError unless ``value`` (when given) is at least ``minimum``."""
    if value is not None and value < minimum:
        raise CliError(f"{option} must be >= {minimum}, got {value}")
