"""Atomic file writes: a killed run leaves the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_text(path: Path, text: str) -> None:
    """Write `text` to a hidden temporary beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json(path: Path, value, indent: int | None = 2) -> None:
    write_text(path, json.dumps(value, indent=indent))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line (non-ASCII kept as is)."""
    write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def iter_jsonl(path: Path):
    """(line number, object) for every non-blank line; a bad line is a ValueError naming the file and line."""
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}: line {n}: a JSON object expected, found {type(row).__name__}")
            yield n, row


def read_jsonl(path: Path) -> list[dict]:
    return [row for _, row in iter_jsonl(path)]
