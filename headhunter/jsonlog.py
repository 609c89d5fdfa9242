"""Append-only JSON-lines logs that survive being killed: each append is flushed to disk, a torn last line (a process
killed mid-write) is dropped on the next start, and readers skip it meanwhile."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

__all__ = ["append_records", "read_records", "repair_log"]


def append_records(path: Path, records: Iterable[dict]) -> None:
    lines = "".join(json.dumps(record) + "\n" for record in records)
    with open(path, "a", encoding="utf-8") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())


def repair_log(path: Path) -> None:
    """Drop a torn last line, so later appends stay line-aligned."""
    if not path.exists():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    with open(path, "wb") as f:
        f.write(data[: data.rfind(b"\n") + 1])
        f.flush()
        os.fsync(f.fileno())


def read_records(paths: Iterable[Path]) -> Iterator[dict]:
    """Every complete record of ``paths``, in order (a torn line of a log still being written is skipped)."""
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
