"""A run's ``metrics.jsonl``: one JSON record per line, each with its ``step``, rewritten atomically
on every append so a crash never leaves a half-written file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from difflab.utils.files import atomic_write_bytes

__all__ = ["read_records", "write_records"]

FILE = "metrics.jsonl"


def read_records(run_dir: Path, until_step: int | None = None) -> list[dict[str, Any]]:
    """The run's records (none without a file), those with ``step <= until_step`` when given (a
    resumed run drops what it will log again); reading stops at a line that does not parse."""
    path = Path(run_dir) / FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a crash: everything after it is lost anyway
    if until_step is None:
        return records
    return [r for r in records if r["step"] <= until_step]


def write_records(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """Write every record, one JSON line each, atomically."""
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write_bytes(Path(run_dir) / FILE, text.encode())
