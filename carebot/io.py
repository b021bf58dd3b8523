"""File I/O for every stage: the one JSONL reader (errors name file:line) and atomic writers (tmp + rename, so
a kill -9 never leaves a half-written file under the final name)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from carebot.errors import InputError


def check_input(path: str | Path) -> Path:
    """`path` as a readable input file, or an InputError saying what it is instead."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a file")
    if not path.is_file():
        raise InputError(f"{path}: no such input file")
    return path


def require_records(paths: Iterable[str | Path], allow_empty: bool = False) -> None:
    """Every path a readable file, and at least one of them not blank (unless `allow_empty`): a command asked
    to process nothing says so instead of writing empty outputs and exiting 0."""
    paths = [check_input(p) for p in paths]
    if allow_empty or not paths:
        return
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 16):
                if chunk.strip():
                    return
    raise InputError(f"{', '.join(map(str, paths))}: no records (empty input; pass --allow-empty to accept that)")


def parse_line(raw: bytes | str, where: str) -> dict[str, Any] | None:
    """One JSONL line -> its record (None for a blank line); bad UTF-8, bad JSON, a non-object or a string with
    half a surrogate pair (`"\\ud800"`: valid JSON, but no UTF-8 can hold it) is an InputError naming `where`."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{where}: not valid UTF-8 (byte {e.start})") from None
    if not raw.strip():
        return None
    try:
        rec = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(rec, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if "\\u" in raw and _SURROGATE.search(raw):  # cheap test first: only escaped surrogates can get in
        try:
            json.dumps(rec, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"{where}: a string holds half a surrogate pair (\\ud800-\\udfff), not text") from None
    return rec


_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def iter_jsonl(path: str | Path, limit: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of a JSONL file; a missing file, a directory, bad UTF-8, bad JSON, a non-object or
    a lone surrogate is an InputError naming file:line. Blank lines are skipped; `limit` counts lines."""
    check_input(path)
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if limit is not None and n > limit:
                return
            rec = parse_line(raw, f"{path}:{n}")
            if rec is not None:
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


def trim_log(path: str | Path, last_step: int) -> int:
    """Keep the rows of a step log (JSONL with a "step" field) up to `last_step`, dropping later rows and a row
    torn by a kill (cut JSON, no final newline); returns how many rows were dropped."""
    path = Path(path)
    if not path.exists():
        return 0

    def step(row: str) -> float:
        try:
            return json.loads(row).get("step", 0) if row.endswith("\n") else float("inf")
        except (ValueError, AttributeError):
            return float("inf")

    lines = path.read_text(encoding="utf-8", errors="replace").splitlines(True)
    keep = [x for x in lines if x.strip() and step(x) <= last_step]
    if len(keep) != len(lines):
        write_text(path, "".join(keep))
    return len(lines) - len(keep)


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    path = Path(path)
    tmp = _tmp(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Write JSON atomically (UTF-8, non-ASCII kept)."""
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str) + "\n")


class Outputs:
    """Several JSONL outputs committed together: records go to temp names, and every file is renamed to its
    final name only when the `with` block ends without an error (an error removes the temps, so a bad record
    late in the input leaves no output that looks complete)."""

    def __init__(self) -> None:
        self._open: dict[Path, tuple[Path, Any]] = {}
        self.counts: dict[Path, int] = {}

    def write(self, path: str | Path, rec: dict[str, Any]) -> None:
        path = Path(path)
        if path not in self._open:
            self.touch(path)
        self._open[path][1].write(json.dumps(rec, ensure_ascii=False) + "\n")
        self.counts[path] += 1

    def touch(self, path: str | Path) -> None:
        """Commit `path` even if no record is written to it (an empty output)."""
        path = Path(path)
        if path not in self._open:
            tmp = _tmp(path)
            self._open[path] = (tmp, open(tmp, "w", encoding="utf-8"))
            self.counts[path] = 0

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        for tmp, f in self._open.values():
            f.close()
        for path, (tmp, _) in self._open.items():
            if exc_type is None:
                os.replace(tmp, path)
            else:
                tmp.unlink(missing_ok=True)
