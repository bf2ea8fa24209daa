"""Generated text as a person reads it and as a program reads it back.

A .txt file is each sample's text with its real line breaks, after a header line
``=== sample i (seed s) ===``; a .jsonl file is one JSON object per sample (``index``, ``seed``,
``sampler``, ``steps``, ``tokens``, ``prompt``, ``text``). Both are written atomically and read back
exactly (:func:`read_samples`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from difflab.utils.files import atomic_write_bytes

__all__ = [
    "FORMATS",
    "format_samples",
    "header",
    "parse_samples",
    "read_samples",
    "sample_records",
    "write_samples",
]

FORMATS = (".txt", ".jsonl")


def header(index: int, seed: int) -> str:
    """The line before sample ``index`` of a .txt file."""
    return f"=== sample {index} (seed {seed}) ===\n"


def format_samples(texts: Sequence[str], seed: int) -> str:
    """The .txt form: for each sample its :func:`header` line, its text, a line break."""
    return "".join(header(i, seed) + text + "\n" for i, text in enumerate(texts))


def parse_samples(content: str) -> list[tuple[int, str]]:
    """(seed, text) of each sample of a .txt form (:func:`format_samples`). Sample i's header is
    the first line ``=== sample i (seed s) ===`` after sample i - 1's, so a text reads back wrong
    only if it holds the next sample's header line itself."""
    found: list[re.Match[str]] = []
    while True:
        i = len(found)
        before = r"\A" if i == 0 else r"(?<=\n)"
        pattern = re.compile(rf"{before}=== sample {i} \(seed (\d+)\) ===\n")
        match = pattern.search(content, found[-1].end() if found else 0)
        if match is None:
            break
        found.append(match)
    if content and not found:
        raise ValueError("not a samples file: it does not start with '=== sample 0 (seed S) ==='")
    ends = [m.start() for m in found[1:]] + [len(content)]
    texts = [content[m.end() : end] for m, end in zip(found, ends)]
    if any(not text.endswith("\n") for text in texts):
        raise ValueError("a sample of this samples file does not end with a line break")
    return [(int(m.group(1)), text[:-1]) for m, text in zip(found, texts)]


def sample_records(texts: Sequence[str], **fields: Any) -> list[dict[str, Any]]:
    """One JSON-ready dict per sample: ``index``, the given ``fields`` (seed, sampler, steps,
    tokens, prompt ...) and ``text``."""
    return [{"index": i, **fields, "text": text} for i, text in enumerate(texts)]


def write_samples(
    path: str | os.PathLike[str],
    texts: Sequence[str],
    *,
    seed: int,
    sampler: str,
    steps: int,
    tokens: int,
    prompt: str | None = None,
) -> Path:
    """Write ``texts`` to a .txt or .jsonl file (by its suffix), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"samples go to a .txt or .jsonl file, got {path}")
    if suffix == ".txt":
        content = format_samples(texts, seed)
    else:
        records = sample_records(
            texts, seed=seed, sampler=sampler, steps=steps, tokens=tokens, prompt=prompt
        )
        content = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    atomic_write_bytes(path, content.encode("utf-8"))
    return path


def read_samples(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The samples of a file :func:`write_samples` wrote: the records of a .jsonl file, or
    ``{"index", "seed", "text"}`` per sample of a .txt file (its bytes decoded as they are, line
    breaks included)."""
    path = Path(path)
    content = path.read_bytes().decode("utf-8")
    if path.suffix.lower() == ".jsonl":
        return [json.loads(line) for line in content.split("\n") if line]
    return [
        {"index": i, "seed": seed, "text": text}
        for i, (seed, text) in enumerate(parse_samples(content))
    ]
