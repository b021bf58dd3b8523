"""File I/O for every stage: the one JSONL reader (errors name file:line) and atomic writers (tmp + rename, so
a kill -9 never leaves a half-written file under the final name)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from carebot.errors import InputError


def iter_jsonl(path: str | Path, limit: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of a JSONL file; a missing file, bad UTF-8 or bad JSON is an InputError naming
    file:line. Blank lines are skipped; `limit` counts lines."""
    if not Path(path).is_file():
        raise InputError(f"{path}: no such input file")
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if limit is not None and n > limit:
                return
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{n}: not valid UTF-8 (byte {e.start})") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise InputError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
            yield n, rec


def read_jsonl(path: str | Path, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The records of a JSONL file (see `iter_jsonl`)."""
    for _, rec in iter_jsonl(path, limit):
        yield rec


def _tmp(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f"{path.name}.tmp{os.getpid()}")  # per process: two writers never share a tmp file


def write_jsonl(path: str | Path, recs: Iterable[dict[str, Any]]) -> int:
    """Write records as JSONL, atomically; returns how many."""
    path = Path(path)
    tmp = _tmp(path)
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    path = Path(path)
    tmp = _tmp(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Write JSON atomically (UTF-8, non-ASCII kept)."""
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str) + "\n")
