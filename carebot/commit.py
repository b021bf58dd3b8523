"""Commit points that cannot lie: outputs named so that two inputs never collide, and completion records that
name what produced them (each input's path, size and mtime, and the config), so a rerun reuses a result only
when nothing it was made from has changed.

The order at every commit point: write the output under a temp name, rename it to its final name, write the
completion record last. A kill before the record leaves work to redo, never a result that looks done."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable

from carebot.errors import InputError
from carebot.io import write_json


def fingerprint(path: str | Path) -> dict[str, Any]:
    """What identifies a file's content cheaply: its resolved path, size and modification time (ns)."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def tree_fingerprint(path: str | Path) -> dict[str, Any]:
    """A fingerprint of a file or of every file under a directory (a model dir: its weights and meta)."""
    p = Path(path)
    if p.is_file():
        return fingerprint(p)
    files = sorted(f for f in p.rglob("*") if f.is_file())
    h = hashlib.sha256(json.dumps([fingerprint(f) for f in files]).encode()).hexdigest()[:16]
    return {"path": str(p.resolve()), "files": len(files), "digest": h}


def output_names(inputs: Iterable[str | Path]) -> list[str]:
    """A collision-free output name per input: its path relative to the inputs' common directory
    (`a/part.jsonl`, `b/part.jsonl` stay apart); one input keeps its file name. The same file given twice is
    an InputError."""
    paths = [Path(p).resolve() for p in inputs]
    seen: set[Path] = set()
    for p in paths:
        if p in seen:
            raise InputError(f"{p}: given twice as input")
        seen.add(p)
    if len(paths) <= 1:
        return [p.name for p in paths]
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return [str(p.relative_to(root)) for p in paths]


class Done:
    """The completion record of one unit of work (`<out>/.done/<name>.json`): its stamp (inputs + config) and
    its result. `result()` is the stored result when the stamp matches, else None (and says why on stderr)."""

    def __init__(self, path: Path, inputs: Iterable[str | Path], config: Any):
        self.path = Path(path)
        self.stamp = {"inputs": [tree_fingerprint(p) for p in inputs], "config": json.loads(json.dumps(config, default=str))}

    def result(self) -> Any | None:
        if not self.path.is_file():
            return None
        try:
            rec = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            rec = None
        if isinstance(rec, dict) and rec.get("stamp") == self.stamp:
            return rec.get("result")
        print(f"{self.path.name}: its input or config changed since it was made; redoing it", file=sys.stderr)
        self.path.unlink(missing_ok=True)
        return None

    def write(self, result: Any) -> None:
        write_json(self.path, {"stamp": self.stamp, "result": result})
