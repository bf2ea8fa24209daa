"""The difflab command line. ``difflab --help`` lists the commands; each has its own ``--help``.

Bad input exits with status 2 and one line, ``difflab <command>: error: <reason>``, never a stack
trace. Each command group is a module of this package with ``add(commands)``, which adds its
subcommand parsers and sets ``run`` to the handler; a new command group is one more module named in
:data:`COMMAND_MODULES`. Handlers import torch and the rest of difflab when they run, so
``difflab --help`` is instant.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from difflab.cli.common import CliError, Parser

__all__ = ["COMMAND_MODULES", "CliError", "main", "parser"]

COMMAND_MODULES = (
    "sample",
    "schedule",
    "train",
    "listings",
    "convert",
    "evaluate",
    "check",
    "text",
    "edit",
    "distill",
    "restore",
    "policy",
    "ts",
    "finetune",
)


def parser() -> Parser:
    """The ``difflab`` argument parser with every command group's subcommands."""
    p = Parser(
        prog="difflab",
        description="difflab: diffusion models as one correct, fast toolkit. "
        "Every sampler runs on every step grid; quality is judged against exact models.",
        epilog="Example: difflab sample --model mnist --steps 10 --guidance 2 --out grid.png",
    )
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"difflab.cli.{name}").add(commands)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error, printed as one line (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        args.run(args)
    except CliError as e:
        print(f"difflab {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"difflab {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
