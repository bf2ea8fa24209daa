"""`difflab convert`: a pickled PyTorch state dict to safetensors, without running its code."""

from __future__ import annotations

import argparse
from typing import Any

from difflab.cli.common import check_output, user_errors

__all__ = ["add"]


def add(commands: Any) -> None:
    c = commands.add_parser(
        "convert",
        help="convert pickled PyTorch weights (.pt, .pth, .ckpt, .bin) to safetensors",
        description="Read a pickled state dict with torch.load(weights_only=True), which refuses "
        "every object but tensors and plain containers, and write its tensors to a .safetensors "
        "file. A state dict nested under 'state_dict', 'model' or 'ema' is found when it is the "
        "only one; --key picks one. difflab loads only safetensors weights.",
        epilog="Example: difflab convert ckpt.pt models/mine/model.safetensors --key ema",
    )
    c.add_argument("source", help="pickled PyTorch file")
    c.add_argument("out", help="output .safetensors file")
    c.add_argument("--key", default=None, help="the entry holding the state dict, e.g. ema")
    c.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from difflab.utils.weights import convert_pickle

    out = check_output(args.out, (".safetensors",), "the output")
    with user_errors():
        tensors = convert_pickle(args.source, out, key=args.key)
    numel = sum(t.numel() for t in tensors.values())
    print(f"wrote {out}: {len(tensors)} tensors, {numel:,} numbers, from {args.source}")
