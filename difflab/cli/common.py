"""What every command shares: one-line user errors (exit status 2) and output-path checks."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "CliError",
    "Parser",
    "add_run_arguments",
    "check_output",
    "lookup",
    "positive",
    "run_training",
    "user_errors",
]


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


def add_run_arguments(parser: argparse.ArgumentParser, what: str = "training") -> None:
    """The arguments of a training command (`difflab train`, `text train`, `distill`): the config,
    its overrides, the run folder and --fresh."""
    parser.add_argument("--config", required=True, help=f"TOML or JSON {what} config")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.lr=1e-3")
    parser.add_argument("--run-dir", default=None, help="run folder (default: run.out/run.name)")
    parser.add_argument(
        "--fresh", action="store_true", help="start over instead of resuming the latest checkpoint"
    )


def run_training(args: argparse.Namespace, train: Callable[..., Any]) -> None:
    """``train(config, overrides, run_dir, resume=...)`` from a training command's arguments (see
    :func:`add_run_arguments`), its errors one line; then name the model folders it wrote."""
    with user_errors():
        trainer = train(args.config, args.overrides, args.run_dir, resume=not args.fresh)
    for folder in trainer.exported:
        print(f"wrote {folder}")
