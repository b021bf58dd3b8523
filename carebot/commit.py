"""Commit points that cannot lie: outputs named so that two inputs never collide, and completion records that
name what produced them (each input's path, size and content hash, and the config), so a rerun reuses a result
only when nothing it was made from has changed.

A file's fingerprint holds the sha256 of its bytes and its stat key (size, mtime, ctime, inode, device). A rerun
hands the recorded fingerprint back as `known`: a file whose stat key is unchanged keeps its recorded hash (no
read: the kernel sets ctime on every write and no user call can set it back), any other file is hashed again, so
an edit that keeps the size and restores the mtime is caught, and a copy or a touch of the same bytes is not
work to redo. Stamps compare without the stat keys (`content_only`).

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


def stat_key(st: os.stat_result) -> list[int]:
    """What changes whenever a file's bytes do (ctime included, which no user call can set back)."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fingerprint(path: str | Path, known: dict | None = None) -> dict[str, Any]:
    """{path, size, sha256, stat} of a file; `known` (its fingerprint from an earlier run) saves the read when
    the stat key is unchanged since."""
    p = Path(path).resolve()
    st = p.stat()
    key = stat_key(st)
    if isinstance(known, dict) and known.get("path") == str(p) and known.get("stat") == key and known.get("sha256"):
        sha = known["sha256"]
    else:
        sha = file_sha256(p)
    return {"path": str(p), "size": st.st_size, "sha256": sha, "stat": key}


def fingerprints(paths: Iterable[str | Path], known: Iterable[dict] | None = None) -> list[dict[str, Any]]:
    """`fingerprint` of each path, with the earlier fingerprints `known` matched by path."""
    by_path = {k.get("path"): k for k in known or () if isinstance(k, dict)}
    return [fingerprint(p, by_path.get(str(Path(p).resolve()))) for p in paths]


def unchanged(fp: dict) -> bool:
    """The file `fp` fingerprints still holds the same bytes (read only when its stat key changed)."""
    try:
        return content_only(fingerprint(fp["path"], fp)) == content_only(fp)
    except (OSError, KeyError, TypeError):
        return False


def content_only(obj: Any) -> Any:
    """`obj` with every fingerprint's stat key left out: what a stamp comparison looks at."""
    if isinstance(obj, dict):
        return {k: content_only(v) for k, v in obj.items() if k != "stat"}
    if isinstance(obj, list):
        return [content_only(v) for v in obj]
    return obj


def tree_fingerprint(path: str | Path, known: dict | None = None) -> dict[str, Any]:
    """A fingerprint of a file or of every file under a directory (a model dir: its weights and meta)."""
    p = Path(path)
    if p.is_file():
        return fingerprint(p, known)
    files = sorted(f for f in p.rglob("*") if f.is_file())
    return {"path": str(p.resolve()), "files": fingerprints(files, (known or {}).get("files"))}


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
        self.inputs = list(inputs)
        self.config = json.loads(json.dumps(config, default=str))
        self.stamp: dict | None = None

    def _stamp(self, known: list | None = None) -> dict:
        known = known if isinstance(known, list) and len(known) == len(self.inputs) else [None] * len(self.inputs)
        return {"inputs": [tree_fingerprint(p, k if isinstance(k, dict) else None) for p, k in zip(self.inputs, known)],
                "config": self.config}

    def result(self) -> Any | None:
        if not self.path.is_file():
            self.stamp = self._stamp()  # the inputs as they are before the work, not after it
            return None
        try:
            rec = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            rec = None
        old = rec.get("stamp") if isinstance(rec, dict) else None
        self.stamp = self._stamp(old.get("inputs") if isinstance(old, dict) else None)
        if content_only(old) == content_only(self.stamp):
            return rec.get("result")
        print(f"{self.path.name}: its input or config changed since it was made; redoing it", file=sys.stderr)
        self.path.unlink(missing_ok=True)
        return None

    def write(self, result: Any) -> None:
        write_json(self.path, {"stamp": self.stamp or self._stamp(), "result": result})
