"""Read jsonl / jsonl.gz / parquet shards in bounded chunks of text, counting bad records instead of crashing.

Fast path: pyarrow's C++ JSON reader parses a whole chunk into an Arrow string column (no Python object per
document). Any chunk it cannot take cleanly (bad JSON, invalid UTF-8, blank lines, non-string values) is re-read
line by line in Python, which finds and names every bad line. Both paths keep exactly the same records."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa

from carebot.commit import file_sha256
from carebot.errors import InputError

MAX_EXAMPLES = 5  # bad lines quoted per file in the report


class BadInput(InputError, ValueError):
    """A bad record in --strict mode (or an unreadable file): the message starts with file:line."""


@dataclass
class FileStats:
    path: str
    records: int = 0  # records kept (documents)
    lines: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    sha256: str = ""

    def bad(self, line: int, reason: str, strict: bool) -> None:
        where = f"{self.path}:{line}: {reason}"
        if strict:
            raise BadInput(where)
        self.skipped[reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(where)


class _HashingReader(io.RawIOBase):
    """Hash the on-disk bytes while gzip (or we) read them: one pass over the file."""

    def __init__(self, f, h):
        self.f, self.h = f, h

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.f.readinto(b)
        if n:
            self.h.update(memoryview(b)[:n])
        return n


def _blocks(path: Path, chunk_bytes: int, h) -> Iterator[memoryview]:
    """Yield views of byte blocks that end on a line boundary (the last may lack its newline).

    One reusable buffer: the tail after the last newline moves to the front, so memory stays at one chunk
    (it doubles only while a single line is longer than a chunk). A view is valid until the next one."""
    raw = open(path, "rb", buffering=0)
    src = _HashingReader(raw, h)
    f = gzip.GzipFile(fileobj=io.BufferedReader(src, 1 << 20)) if path.name.endswith(".gz") else src
    buf = bytearray(chunk_bytes)
    fill, eof = 0, False
    try:
        while not eof:
            with memoryview(buf) as mv:
                while fill < len(buf):
                    n = f.readinto(mv[fill:])
                    if not n:
                        eof = True
                        break
                    fill += n
            cut = fill if eof else buf.rfind(b"\n", 0, fill) + 1
            if cut == 0 and not eof:  # one line longer than the buffer: grow it
                bigger = bytearray(2 * len(buf))
                bigger[:fill] = buf
                buf = bigger
                continue
            if cut:
                with memoryview(buf) as mv:
                    yield mv[:cut]
            buf[: fill - cut] = buf[cut:fill]
            fill -= cut
    finally:
        raw.close()


def _n_lines(buf: memoryview) -> int:
    a = np.frombuffer(buf, dtype=np.uint8)
    return int(np.count_nonzero(a == 10)) + (0 if len(a) == 0 or a[-1] == 10 else 1)


def _fast_parse(buf: bytes, keys: list[str], n_lines: int) -> dict[str, pa.Array] | None:
    """Arrow columns for `keys`, or None when the chunk needs the line-by-line path."""
    import pyarrow.json as pj

    schema = pa.schema([(k, pa.string()) for k in keys])
    try:
        tab = pj.read_json(pa.BufferReader(pa.py_buffer(buf)), read_options=pj.ReadOptions(block_size=4 << 20),
                           parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"))
        if tab.num_rows != n_lines:  # blank lines are dropped silently by Arrow: line numbers would drift
            return None
        cols = {k: tab.column(k).combine_chunks() for k in keys}
        for c in cols.values():
            c.validate(full=True)  # invalid UTF-8 inside a string
        return cols
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None


def _slow_parse(buf: bytes, keys: list[str], first_line: int, stats: FileStats, strict: bool,
                render: Callable[[dict], str] | None) -> dict[str, pa.Array]:
    cols: dict[str, list[str]] = {k: [] for k in keys}
    buf = bytes(buf)
    for i, line in enumerate(buf.split(b"\n")[: buf.count(b"\n") + (0 if buf.endswith(b"\n") else 1)]):
        ln = first_line + i
        if not line.strip():
            stats.bad(ln, "blank_line", strict)
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            stats.bad(ln, "invalid_utf8", strict)
            continue
        except ValueError:
            stats.bad(ln, "malformed_json", strict)
            continue
        if not isinstance(rec, dict):
            stats.bad(ln, "malformed_json", strict)
            continue
        texts, reason = {}, None
        for k in keys:
            if render is not None:
                try:
                    v = render(rec)
                except (KeyError, TypeError, ValueError) as e:
                    reason = f"not_a_dialogue ({e})"
                    break
            else:
                v = rec.get(k)
            if v is None:
                reason = f"missing_key '{k}'"
            elif not isinstance(v, str):
                reason = f"not_text '{k}' ({type(v).__name__})"
            elif not v:
                reason = f"empty_text '{k}'"
            else:
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:  # lone surrogates from \\ud800-style escapes
                    reason = "invalid_utf8"
            if reason:
                break
            texts[k] = v
        if reason:
            stats.bad(ln, reason, strict)
            continue
        for k in keys:
            cols[k].append(texts[k])
    return {k: pa.array(v, pa.large_string()) for k, v in cols.items()}


def _drop_null_and_empty(cols: dict[str, pa.Array], first_line: int, stats: FileStats,
                         strict: bool) -> dict[str, pa.Array]:
    """Drop rows whose value is missing (null) or empty in any key; report them in line order."""
    keep = np.ones(len(next(iter(cols.values()))), dtype=bool)
    bad: dict[int, str] = {}
    for k, c in cols.items():
        offs = np.frombuffer(c.buffers()[1], dtype=np.int64 if pa.types.is_large_string(c.type) else np.int32)
        empty = np.diff(offs[c.offset: c.offset + len(c) + 1]) == 0
        null = c.is_null().to_numpy(zero_copy_only=False) if c.null_count else np.zeros(len(c), bool)
        for r in np.flatnonzero(empty & keep):
            bad[int(r)] = f"missing_key '{k}'" if null[r] else f"empty_text '{k}'"
        keep &= ~empty
    for r in sorted(bad):
        stats.bad(first_line + r, bad[r], strict)
    if keep.all():
        return cols
    mask = pa.array(keep)
    return {k: c.filter(mask) for k, c in cols.items()}


def jsonl_columns(path: Path, keys: list[str], stats: FileStats, chunk_bytes: int = 32 << 20, strict: bool = False,
                  render: Callable[[dict], str] | None = None) -> Iterator[dict[str, pa.Array]]:
    """Yield {key: Arrow string array} per chunk of a .jsonl / .jsonl.gz file; bad records go to `stats`."""
    h = hashlib.sha256()
    line = 1
    for buf in _blocks(path, chunk_bytes, h):
        n = _n_lines(buf)
        cols = None if render is not None else _fast_parse(buf, keys, n)
        if cols is not None:
            cols = _drop_null_and_empty(cols, line, stats, strict)
        else:
            cols = _slow_parse(buf, keys, line, stats, strict, render)
        line += n
        stats.lines += n
        stats.records += len(next(iter(cols.values())))
        yield cols
    stats.sha256 = h.hexdigest()


def parquet_columns(path: Path, keys: list[str], stats: FileStats, chunk_bytes: int = 32 << 20,
                    strict: bool = False) -> Iterator[dict[str, pa.Array]]:
    """Yield {key: Arrow string array} per row batch of a parquet file; rows are numbered from 1 like lines."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    missing = [k for k in keys if k not in pf.schema_arrow.names]
    if missing:
        if strict or pf.metadata.num_rows == 0:
            raise BadInput(f"{path}:1: missing_key {missing} (columns: {pf.schema_arrow.names})")
        for r in range(pf.metadata.num_rows):
            stats.bad(r + 1, f"missing_key '{missing[0]}'", strict)
        stats.lines = pf.metadata.num_rows
        stats.sha256 = file_sha256(path)
        return
    md = pf.metadata
    avg = max(1, sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups)) // max(1, md.num_rows))
    row = 1
    for batch in pf.iter_batches(batch_size=max(1, chunk_bytes // avg), columns=keys):
        cols = {}
        for k in keys:
            c = batch.column(k)
            if not (pa.types.is_string(c.type) or pa.types.is_large_string(c.type)):
                try:
                    c = c.cast(pa.large_string())
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise BadInput(f"{path}:{row}: column '{k}' of type {c.type} is not text ({e})") from None
            cols[k] = c
        cols = _drop_null_and_empty(cols, row, stats, strict)
        row += batch.num_rows
        stats.lines += batch.num_rows
        stats.records += len(next(iter(cols.values())))
        yield cols
    stats.sha256 = file_sha256(path)  # parquet is read by row group, not front to back: one more read
